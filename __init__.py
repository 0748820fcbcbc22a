"""edgeawq: quantization-first LLM inference for edge NPUs and CPUs.

The repository root is this package (layout from the design card): `awq/` the algorithm, `kernels/` the
numerics and fused modules, `checkpoints/` the on-disk formats, `runtime/` the reference model runtime and
decode loop, `npu_backend/` and `tt_backend/` the deployment targets, `cli.py` the `run_awq` entry point, `api.py` the Python API (docs/api.md).
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _drop_own_folder_from_sys_path() -> None:
    """Remove this package's own folder (the repository root) from sys.path. `python -m ...` or `python -c` run in
    the repository root put it there, and then its subfolders shadow top-level packages of the same name:
    transformers >= 5.25 imports the PyPI package `kernels`, which resolved to this package's `kernels/`. Importing
    `edgeawq` itself needs the folder above, never this one, so nothing is lost."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]

_drop_own_folder_from_sys_path()

from .api import Model, load, quantize  # noqa: E402  (light: heavy libraries load when these are called)
from .errors import UserError  # noqa: E402

__all__ = ["quantize", "load", "Model", "UserError", "__version__"]

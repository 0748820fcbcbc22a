"""edgeawq: quantization-first LLM inference for edge NPUs and CPUs.

The repository root is this package (layout from the design card): `awq/` the algorithm, `kernels/` the
numerics and fused modules, `checkpoints/` the on-disk formats, `runtime/` the reference model runtime and
decode loop, `npu_backend/` and `tt_backend/` the deployment targets, `cli.py` the `run_awq` entry point, `api.py` the Python API (docs/api.md).
"""
__version__ = "0.1.0"

from .api import Model, load, quantize  # noqa: E402  (light: heavy libraries load when these are called)
from .errors import UserError  # noqa: E402

__all__ = ["quantize", "load", "Model", "UserError", "__version__"]

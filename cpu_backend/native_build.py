"""Build and load the native CPU kernels (cpu_backend/native/decoder.cpp) with torch.utils.cpp_extension.

The extension is compiled once per (source, torch version, instruction set) into
`$EDGEAWQ_NATIVE_BUILD/<name>` (default `$EDGEAWQ_CACHE/native-build`; about 30 s per instruction set the first
time) and loaded from there afterwards. Instruction sets:

* ``avx512vnni``: AVX-512 F/BW/VL + VNNI (vpdpbusd on 16 rows at once); chosen when the CPU reports them.
* ``avx2``: AVX2 + FMA + F16C (vpmaddubsw/vpmaddwd on 8 rows at once).

`unavailable_reason()` says why the native kernels cannot run here (not x86-64 Linux, CPU without AVX2/FMA/F16C,
no C++ compiler or ninja), or None.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch

from ..runtime.model_identity import cache_root

SOURCE = Path(__file__).resolve().parent / "native" / "decoder.cpp"
ISA_FLAGS = {
    "avx512vnni": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
}
CPU_FLAGS = {"avx512vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
             "avx2": {"avx2", "fma", "f16c"}}
# -fopenmp: the parallel loops run on the OpenMP runtime PyTorch loaded (decoder.cpp, "threads").
COMMON_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def best_isa() -> str | None:
    """The fastest instruction set of ISA_FLAGS this CPU supports, or None."""
    flags = cpu_flags()
    return next((isa for isa, need in CPU_FLAGS.items() if need <= flags), None)


def _ninja_on_path() -> bool:
    """True when `ninja` is on PATH (torch's extension builder runs it from there); the `ninja` wheel's binary
    is put on PATH when it is installed but its folder is not (e.g. a venv used without activating it)."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    return shutil.which("ninja") is not None


def unavailable_reason() -> str | None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the native kernels are written for x86-64 Linux, this is {platform.system()} {platform.machine()}"
    if best_isa() is None:
        return "this CPU lacks AVX2, FMA or F16C, which the native kernels need"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler was found to build the native kernels (install g++, e.g. apt install g++)"
    if not _ninja_on_path():
        return "ninja was not found to build the native kernels (pip install ninja)"
    return None


@lru_cache(maxsize=None)
def build_problem() -> str | None:
    """Why the native kernels cannot be built and loaded here (unavailable_reason, or the compiler's complaint),
    or None once they are loaded."""
    reason = unavailable_reason()
    if reason:
        return reason
    try:
        load()
    except Exception as e:  # noqa: BLE001 - compiler, linker and loader errors all mean "cannot use it"
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return f"the native kernels failed to build ({lines[-1] if lines else type(e).__name__})"
    return None


def _import_built(name: str, path: Path):
    """The already built extension module at `path` (torch must be imported first: the module links libtorch)."""
    import importlib.machinery
    import importlib.util

    import torch  # noqa: F401 - loads libtorch and libgomp the module links against

    spec = importlib.util.spec_from_file_location(name, str(path),
                                                  loader=importlib.machinery.ExtensionFileLoader(name, str(path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def load(isa: str | None = None):
    """The compiled extension module for `isa` (default: best_isa()). Raises RuntimeError when it cannot build."""
    from torch.utils.cpp_extension import load as load_extension

    isa = isa or best_isa()
    if isa not in ISA_FLAGS:
        raise RuntimeError(f"unknown instruction set {isa!r}")
    flags = COMMON_FLAGS + ISA_FLAGS[isa]
    key = hashlib.sha256(SOURCE.read_bytes() + f"{torch.__version__}|{' '.join(flags)}".encode()).hexdigest()[:16]
    name = f"edgeawq_native_{isa}_{key}"
    folder = Path(os.environ.get("EDGEAWQ_NATIVE_BUILD") or cache_root() / "native-build") / name
    folder.mkdir(parents=True, exist_ok=True)
    built = sorted(folder.glob(f"{name}*.so"))
    if built and (folder / "build.ninja").exists() and all(
            f.stat().st_mtime >= SOURCE.stat().st_mtime for f in built):
        try:
            return _import_built(name, built[0])       # skips ninja's up-to-date check (about 2 s per process)
        except (ImportError, OSError):                 # e.g. a link cut short: let the build below redo it
            pass
    first = not built
    if first:
        print(f"[native] compiling the native kernels ({isa}) into {folder}: once per machine and version, "
              "about 30-60 s ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    module = load_extension(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                            build_directory=str(folder), verbose=False)
    if first:
        print(f"[native] compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return module

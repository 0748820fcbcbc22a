"""Memory of the process and the machine.

`release_free_memory`: give freed heap memory back to the operating system between large steps (glibc only; a
no-op elsewhere).
glibc raises its mmap threshold after large frees, so later tensors of a few MB come from the heap and stay
resident after they are freed; layer-by-layer passes then creep upward in RSS. `malloc_trim(0)` returns
those free pages. `available_bytes`: what the machine can still give (MemAvailable).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = None
_name = ctypes.util.find_library("c")
if _name:
    try:
        _libc = ctypes.CDLL(_name)
        _libc.malloc_trim  # noqa: B018 (glibc has it; musl and macOS do not)
    except (OSError, AttributeError):
        _libc = None


def proc_kb_field(path: str, key: str) -> int | None:
    """A "Key:   N kB" line of a /proc file (meminfo, self/status) in bytes, or None where it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    return proc_kb_field("/proc/meminfo", "MemAvailable")


def release_free_memory() -> None:
    if _libc is not None:
        _libc.malloc_trim(0)

"""Tenstorrent numerics (block-float weight formats, math-fidelity matmul emulation, precision configs).

Status: not written yet (issue 6); the `tt` target is not in the backend registry until it exists.
"""

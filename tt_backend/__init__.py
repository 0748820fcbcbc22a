"""Tenstorrent numerics (block-float weight formats, math-fidelity matmul emulation, precision configs).

Status: the block-float formats (blockfloat.py: bfloat8_b / bfloat4_b / bfloat2_b encoder, decoder and tile
byte layout) exist and are tested bit-exactly; the rest of issue 6 (device-pack rounding, fidelity emulation,
precision configs, the `tt` target) is not written yet, so `tt` is not in the backend registry.
"""

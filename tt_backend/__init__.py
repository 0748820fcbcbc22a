"""Tenstorrent numerics (block-float weight formats, math-fidelity matmul emulation, precision configs).

Status: the block-float formats (blockfloat.py: bfloat8_b / bfloat4_b / bfloat2_b encoder, decoder and tile
byte layout, tested bit-exactly) and the math-fidelity matmul emulation (fidelity.py) exist; the rest of issue 6
(device-pack rounding, precision configs, weight cache, the `tt` target, accuracy reports) is not written yet, so
`tt` is not in the backend registry.
"""

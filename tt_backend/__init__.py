"""Tenstorrent numerics and the `tt` target (CPU emulation; docs/tenstorrent.md).

blockfloat.py   bfloat8_b / bfloat4_b / bfloat2_b host encoder, decoder and tile byte layout (bit-exact with ttnn)
device_pack.py  the device's own block-float rounding (KV-cache writes, op outputs)
fidelity.py     math-fidelity matmul emulation (LoFi, HiFi2, HiFi3, HiFi4; fp32 or bf16 accumulation)
precision.py    precision configs (tt-metal demo defaults, JSON files with per-layer overrides)
weights.py      conversion of a checkpoint's weights per config, cached on disk
engine.py       the decoder with Tenstorrent numerics (the engine behind --target tt)
backend.py      config -> weights -> engine, for the backend registry
"""

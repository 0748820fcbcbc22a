"""The block-float encoder against Tenstorrent's own ttnn (0.81.1) host encoder, from a recorded golden file.

tests/tt_backend/data/ttnn_golden.npz is written by scripts/make_ttnn_golden.py in an environment with ttnn
(see that script); it holds the inputs, ttnn's decoded values and the bytes of ttnn.dump_tensor's .tensorbin file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeawq.tt_backend.blockfloat import TILE_BYTES, pack_tiles, unpack_tiles

GOLDEN = np.load(Path(__file__).parent / "data" / "ttnn_golden.npz")
CASES = sorted({k.split(".")[0] for k in GOLDEN.files if k.endswith(".input")})


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("case", CASES)
def test_encoder_matches_ttnn(case: str, bits: int):
    x = torch.from_numpy(GOLDEN[f"{case}.input"])
    packed = pack_tiles(x, bits)                                          # (tiles, TILE_BYTES[bits])
    ours = unpack_tiles(packed, bits, *x.shape).numpy()
    theirs = GOLDEN[f"{case}.bfp{bits}.decoded"]
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} values differ from ttnn"
    payload = GOLDEN[f"{case}.bfp{bits}.tensorbin"].tobytes()
    n = packed.shape[0] * TILE_BYTES[bits]
    assert payload[-n:] == packed.numpy().tobytes()                      # the tile bytes ttnn writes

"""Write tests/tt_backend/data/ttnn_golden.npz: block-float tiles encoded by Tenstorrent's own ttnn package.

Runs in an environment where `ttnn` is importable (PyPI ships it for CPython 3.10 and 3.12, not 3.11; numpy is the
only other need, torch is not used). Without a Tenstorrent card, ttnn is pointed at a mock single-chip Wormhole
(n150) cluster descriptor, which is enough for host-side tensor conversion. For each input case (stored in the
file too) and each format ttnn has (bfloat8_b, bfloat4_b), the file holds ttnn's decoded values (Tensor.to_list)
and the bytes of ttnn.dump_tensor's .tensorbin file, whose tail is the tile payload. tests/tt_backend/
test_ttnn_golden.py checks the project's encoder against both.

    python3.12 -m venv /tmp/ttnn && /tmp/ttnn/bin/pip install ttnn numpy
    /tmp/ttnn/bin/python scripts/make_ttnn_golden.py [--out tests/tt_backend/data/ttnn_golden.npz]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import tempfile
from pathlib import Path

import numpy as np

# A single n150 card (one Wormhole chip), in the cluster-descriptor format of tt-metal's UMD layer.
MOCK_N150 = """arch: {
   0: Wormhole,
}
chips: {
   0: [0,0,0,0],
}
ethernet_connections: [
]
chips_with_mmio: [
   0: 0,
]
harvesting: {
   0: {noc_translation: true, harvest_mask: 32},
}
boardtype: {
   0: n150,
}
boards: [
   [ {board_id: 72059269369839682}, {board_type: n150}, {chips: [0]} ],
]
"""


def input_cases() -> dict[str, np.ndarray]:
    """Deterministic float32 inputs: plain normals, mixed exponents inside blocks, hand-picked specials, padding."""
    rs = np.random.RandomState(0)
    special = np.zeros((32, 32), np.float32)
    special[0, :16] = [7.9999, 1, 0.5, 0.25, 3, 2.5, -7.9999, 1e-40, -1e-40, 0, -0.0, 1.0078125, 1.015625,
                       1.0234375, 6.0, -5.5]                                  # clamp, denormals, zeros, ties
    special[1, :16] = [1.0] + [2.0 ** -7 * k for k in range(1, 16)]          # values far below the block max
    special[2, :16] = [4.0] + [1 + 2.0 ** -6 + 2.0 ** -7 * j for j in range(15)]
    special[3:, :] = rs.randn(29, 32) * 1e-3
    return {
        "normal": rs.randn(64, 96).astype(np.float32),
        "mixed_exp": (rs.randn(32, 64) * np.exp2(rs.randint(-20, 20, size=(32, 64)))).astype(np.float32),
        "special": special,
        "padding": rs.randn(40, 50).astype(np.float32),                        # not a multiple of 32 either way
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/tt_backend/data/ttnn_golden.npz"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if "TT_METAL_MOCK_CLUSTER_DESC_PATH" not in os.environ:
        (tmp / "n150.yaml").write_text(MOCK_N150)
        os.environ["TT_METAL_MOCK_CLUSTER_DESC_PATH"] = str(tmp / "n150.yaml")
    import ttnn

    out: dict[str, np.ndarray] = {"ttnn_version": np.array(importlib.metadata.version("ttnn"))}
    for name, x in input_cases().items():
        out[f"{name}.input"] = x
        for dtype, bits in ((ttnn.bfloat8_b, 8), (ttnn.bfloat4_b, 4)):
            t = ttnn.Tensor(x.ravel().tolist(), list(x.shape), dtype, ttnn.TILE_LAYOUT)
            out[f"{name}.bfp{bits}.decoded"] = np.asarray(t.to_list(), dtype=np.float32).reshape(x.shape)
            path = tmp / f"{name}_{bits}.tensorbin"
            ttnn.dump_tensor(str(path), t)
            out[f"{name}.bfp{bits}.tensorbin"] = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} with ttnn {out['ttnn_version']}")


if __name__ == "__main__":
    main()

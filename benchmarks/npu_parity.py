"""NPU parity and AIE-emulation table: for each default model, AWQ w4 g128 and w3 g128 checkpoints, evaluated as

* reference: `--target cpu` (PyTorch, bf16 activations: w4abf16),
* npu (CPU provider): `--target npu --ep CPU` (the exported ONNX Runtime graph, MatMulNBits accuracy_level 4),
* AIE emulation: `--target cpu --act_dtype aie` (the Ryzen AI kernel's numerics),

with perplexity on the shipped corpus test split (512-token windows, no BOS, all windows), the npu target's
greedy agreement with the reference (5 prompts x 24 tokens, teacher-forced on the reference's tokens) and
last-token logits PCC on the windows. Prints one JSON line per checkpoint, then a markdown table; raw lines go to
benchmarks/results/npu_parity.jsonl with --save.
Usage: python benchmarks/npu_parity.py [--models default-llama default-qwen2] [--work runs/npu_parity] [--save]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.parity import greedy_parity, window_parity
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity
from edgeawq.tasks.quantize import quantize_task

PROMPTS = ["The hacker ethic", "A bug is", "Kludge: a", "Politeness, n.", "When the system crashed, the"]
RESULTS = Path(__file__).parent / "results" / "npu_parity.jsonl"


def awq_checkpoint(model: str, bits: int, work: Path) -> Path:
    out = work / f"{model}-w{bits}g128-awq"
    if not (out / "manifest.json").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_task(str(DEFAULT_MODELS[model]), str(out), w_bit=bits, group_size=128, zero_point=True,
                          algorithm="awq", awq_mode="run", awq_cache=None, dump_awq=None, lm_head=False,
                          lm_head_group_size=32, calib_dataset=None, n_samples=128, seqlen=512, seed=0,
                          duo_scaling=False, progress=False)
    return out


def measure(ckpt: Path, seqlen: int) -> dict:
    ref_loaded = load_model(ckpt)
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(ref_loaded.tokenizer, text, seqlen, None, ref_loaded.max_context)
    reference = require("cpu").make_engine(ref_loaded, EngineOptions(flash_attention=True))
    npu = require("npu").make_engine(load_model(ckpt), EngineOptions(ep="CPU"))
    aie = require("cpu").make_engine(load_model(ckpt, "fp32", "aie"), EngineOptions(flash_attention=True))
    greedy = greedy_parity(reference, npu, [ref_loaded.tokenizer(p)["input_ids"] for p in PROMPTS], 24)
    win = window_parity(reference, npu, windows)
    aie_ppl = perplexity(aie, windows)[0]
    return {"reference_ppl": round(win.reference_ppl, 4), "npu_cpu_provider_ppl": round(win.target_ppl, 4),
            "aie_emulation_ppl": round(aie_ppl, 4), "npu_vs_reference_ppl_rel_diff": round(win.ppl_rel_diff, 6),
            "min_last_token_pcc": round(win.min_last_token_pcc, 6),
            "mean_last_token_pcc": round(win.mean_last_token_pcc, 6),
            "greedy_identical_prompts": f"{greedy.identical_prompts}/{greedy.prompts}",
            "greedy_first_divergence": greedy.first_divergence, "greedy_min_pcc": round(greedy.min_pcc, 6),
            "windows": win.windows, "seqlen": win.seqlen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=sorted(DEFAULT_MODELS))
    ap.add_argument("--work", type=Path, default=Path("runs/npu_parity"))
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--save", action="store_true", help=f"also write the JSON lines to {RESULTS}")
    args = ap.parse_args()
    os.environ.setdefault("EDGEAWQ_CACHE", str(args.work / "cache"))
    rows = []
    for model in args.models:
        for bits in (4, 3):
            row = {"model": model, "config": f"AWQ w{bits} g128", **measure(awq_checkpoint(model, bits, args.work),
                                                                         args.seqlen)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.save:
        RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n| model | checkpoint | reference (cpu, bf16 act) | npu (CPU provider) | AIE emulation | npu/ref ppl diff "
          "| min last-token PCC | greedy identical |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['config']} | {r['reference_ppl']:.2f} | {r['npu_cpu_provider_ppl']:.2f} | "
              f"{r['aie_emulation_ppl']:.2f} | {100 * r['npu_vs_reference_ppl_rel_diff']:.2f}% | "
              f"{r['min_last_token_pcc']:.4f} | {r['greedy_identical_prompts']} |")


if __name__ == "__main__":
    main()

"""One AWQ checkpoint of the real SmolLM2-135M-Instruct on every target, against the reference engine.

Checkpoint: `run_awq quantize --model smollm2 --group_size 64` (AWQ w4 g64, default calibration; RTN with
--algorithm pergrp; with --algorithm import the GGUF file's own Q4_1 blocks taken over unchanged, `--group_size 32`),
written to --checkpoint when missing. For the import, one more row compares it with the GGUF file dequantized to
float (`--model smollm2`), both on the torch engine with fp32 activations: the same weights, so the same numbers
up to summation order. Reference: `--target cpu --engine torch` (PyTorch, bf16 activations: w4abf16).
Targets: cpu native (int8 activations), cpu onnx and npu (`--ep CPU`; the exported ONNX Runtime graph, MatMulNBits
accuracy_level 4), tt performance and tt accuracy (Tenstorrent numerics emulated on the CPU).

* perplexity: the first --max_windows windows of 512 tokens of the shipped test split, no BOS, one forward per
  window on each engine; relative difference to the reference (goal for cpu and npu: <= 0.5%), its standard
  error over the windows, and last-token logits PCC (evaluation/parity.window_parity);
* tt table: teacher-forced top-1 / top-5 agreement with the reference and logits PCC on the same windows, the last
  --decode_tokens positions of each window through the decode path (evaluation/accuracy.teacher_forced_accuracy);
* chat: greedy answers (chat template, --new_tokens tokens, stop at EOS) to 5 instruct prompts on torch, native,
  onnx (cpu) and npu; each engine's tokens compared with the reference's (identical prompts, first differing step);
  then the same prompts teacher-forced on the reference's tokens (evaluation/parity.greedy_parity): where the argmaxes
  part, the reference's margin between the two tokens (a near tie when it is below the engines' logit differences);
* onnxruntime-genai: `onnxruntime_genai.Model` / `Generator` on the npu export folder (what `run_awq export` writes)
  greedy-generates the same prompts; its tokens compared with the npu engine's.

Prints one JSON line per measurement; --save writes them to benchmarks/results/real_model_targets.jsonl
(real_model_targets_q4_1_import.jsonl for --algorithm import).
Usage: python benchmarks/real_model_targets.py [--checkpoint runs/smollm2-w4g64] [--algorithm awq|pergrp|import]
       [--max_windows 8] [--new_tokens 32]
       [--targets native onnx npu tt-performance tt-accuracy] [--save]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from edgeawq.evaluation.accuracy import teacher_forced_accuracy
from edgeawq.evaluation.parity import greedy_parity, window_parity
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text
from edgeawq.runtime.backends import EngineOptions, require
from edgeawq.runtime.generate import encode_prompts, eos_ids, generate_ids
from edgeawq.runtime.model_loader import load_model

PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy.",
           "Explain what a Python list is in one sentence.", "Write a haiku about the sea.",
           "How many days are there in a leap year?"]
TARGETS = {"native": ("cpu", EngineOptions(engine="native")), "onnx": ("cpu", EngineOptions(engine="onnx")),
           "npu": ("npu", EngineOptions(ep="CPU")),
           "tt-performance": ("tt", EngineOptions(tt_precision="performance", tt_device="off")),
           "tt-accuracy": ("tt", EngineOptions(tt_precision="accuracy", tt_device="off"))}
CHAT_ENGINES = ("native", "onnx", "npu")
RESULTS = {"awq": Path(__file__).parent / "results" / "real_model_targets.jsonl",
           "pergrp": Path(__file__).parent / "results" / "real_model_targets_rtn.jsonl",
           "import": Path(__file__).parent / "results" / "real_model_targets_q4_1_import.jsonl"}
LABELS = {"awq": "AWQ w4 g64", "pergrp": "RTN w4 g64", "import": "GGUF Q4_1 import w4 g32"}


def checkpoint(out: Path, algorithm: str) -> Path:
    """`out`, quantized from the packaged SmolLM2 (w4 g64, `algorithm` awq or pergrp; import: its Q4_1 blocks, g32)
    when it holds no checkpoint."""
    from edgeawq.tasks.quantize import quantize_task

    if not (out / "manifest.json").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_task("smollm2", str(out), 4, 32 if algorithm == "import" else 64, True, algorithm, "run", None,
                          None, False, 32, None, 128, 512, 0, False, progress=False)
    return out


def engine(ckpt: Path, name: str):
    if name == "torch":
        return require("cpu").make_engine(load_model(ckpt), EngineOptions(engine="torch"))
    target, options = TARGETS[name]
    return require(target).make_engine(load_model(ckpt), options)


def chat_tokens(eng, prompts: list[list[int]], new_tokens: int, stop: set[int]) -> list[list[int]]:
    return [generate_ids(eng, [p], new_tokens, len(p) + new_tokens, 0, stop)[0].token_ids for p in prompts]


def compare(reference: list[list[int]], other: list[list[int]]) -> dict:
    first = []
    for a, b in zip(reference, other):
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if diff is None and len(a) != len(b):
            diff = min(len(a), len(b))
        first.append(diff)
    return {"identical_prompts": f"{sum(d is None for d in first)}/{len(first)}", "first_difference": first}


def genai_tokens(folder: Path, prompts: list[list[int]], new_tokens: int, stop: set[int]) -> list[list[int]]:
    """Greedy tokens of onnxruntime-genai's own generator; the end-of-sequence token it returns last is dropped
    (generate_ids stops before it)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    out = []
    for p in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(p) + new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([p], dtype=np.int32))
        tokens = []
        while not gen.is_done():
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
        out.append(tokens[:-1] if tokens and tokens[-1] in stop else tokens)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/smollm2-w4g64"))
    ap.add_argument("--algorithm", choices=["awq", "pergrp", "import"], default="awq",
                    help="How a missing --checkpoint is made (pergrp = RTN, for a quick run; import = the GGUF "
                         "file's Q4_1 blocks).")
    ap.add_argument("--max_windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--decode_tokens", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--save", action="store_true", help="also write the JSON lines to benchmarks/results/")
    args = ap.parse_args()
    os.environ.setdefault("EDGEAWQ_CACHE", str(args.checkpoint.parent / "cache"))
    ckpt = checkpoint(args.checkpoint, args.algorithm)
    loaded = load_model(ckpt)
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(loaded.tokenizer, text, args.seqlen, args.max_windows, loaded.max_context)
    prompts = encode_prompts(loaded.tokenizer, PROMPTS, instruct=True)
    stop = eos_ids(loaded.tokenizer, loaded.config)
    rows = []

    def emit(row: dict) -> None:
        row = {"model": "smollm2-135m", "checkpoint": LABELS[args.algorithm], **row}
        print(json.dumps(row), flush=True)
        rows.append(row)

    reference = engine(ckpt, "torch")
    ref_chat = chat_tokens(reference, prompts, args.new_tokens, stop)
    emit({"measure": "chat", "engine": "torch (reference)", "answers": [loaded.tokenizer.decode(t) for t in ref_chat]})
    if args.algorithm == "import":            # fp32 activations on both sides: only the weights could differ
        source = require("cpu").make_engine(load_model("smollm2", "fp32"), EngineOptions(engine="torch"))
        imported = require("cpu").make_engine(load_model(ckpt, "fp32", "fp32"), EngineOptions(engine="torch"))
        win = window_parity(source, imported, windows)
        emit({"measure": "perplexity", "engine": "torch, fp32 activations", "vs": "the GGUF file dequantized to float",
              "reference_ppl": round(win.reference_ppl, 4), "target_ppl": round(win.target_ppl, 4),
              "ppl_rel_diff": round(win.ppl_rel_diff, 6), "min_last_token_pcc": round(win.min_last_token_pcc, 6),
              "windows": win.windows, "seqlen": win.seqlen})
        del source, imported
    chats = {}
    for name in args.targets:
        target = engine(ckpt, name)
        win = window_parity(reference, target, windows)
        row = {"measure": "perplexity", "engine": name, "reference_ppl": round(win.reference_ppl, 4),
               "target_ppl": round(win.target_ppl, 4), "ppl_rel_diff": round(win.ppl_rel_diff, 6),
               "ppl_rel_diff_se": round(win.ppl_rel_diff_se, 6),
               "min_last_token_pcc": round(win.min_last_token_pcc, 6), "windows": win.windows, "seqlen": win.seqlen}
        emit(row)
        if name.startswith("tt"):
            acc = teacher_forced_accuracy(reference, target, windows, args.seqlen - args.decode_tokens)
            emit({"measure": "tt accuracy", "engine": name, "top1": round(acc.top1, 4), "top5": round(acc.top5, 4),
                  "top1_prefill": round(acc.top1_prefill, 4), "top1_decode": round(acc.top1_decode, 4),
                  "mean_pcc": round(acc.mean_pcc, 6), "min_pcc": round(acc.min_pcc, 6), "positions": acc.positions})
        if name in CHAT_ENGINES:
            chats[name] = chat_tokens(target, prompts, args.new_tokens, stop)
            emit({"measure": "chat", "engine": name, **compare(ref_chat, chats[name]),
                  "vs": "torch (reference)"})
            tf = greedy_parity(reference, target, prompts, args.new_tokens)
            emit({"measure": "teacher-forced greedy", "engine": name, "vs": "torch (reference)",
                  "identical_prompts": f"{tf.identical_prompts}/{tf.prompts}", "min_pcc": round(tf.min_pcc, 6),
                  "first_divergence": [d and {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
                                       for d in tf.first_divergence]})
        if name == "npu":
            from edgeawq.npu_backend.backend import ensure_export

            folder = ensure_export(load_model(ckpt), None, TARGETS["npu"][1].accuracy_level)
            emit({"measure": "chat", "engine": "onnxruntime-genai (og.Generator on the export folder)",
                  **compare(chats["npu"], genai_tokens(folder, prompts, args.new_tokens, stop)), "vs": "npu"})
        del target
    if "native" in chats and "onnx" in chats:
        emit({"measure": "chat", "engine": "onnx", **compare(chats["native"], chats["onnx"]), "vs": "native"})
    if args.save:
        RESULTS[args.algorithm].write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()

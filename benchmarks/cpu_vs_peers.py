"""Ours (`--target cpu`) against llama.cpp and onnxruntime-genai on the same machine, in one run, interleaved.

For each shape (default: llama-3.2-1b, llama-2-7b) at w4 g128, random weights (speed does not depend on them):
* ours: `run_awq --task benchmark --random_weights --lm_head --dtype bf16` (RTN w4 g128, lm_head w4 g128 like the
  genai builder's; the cpu target's default engine, the native one (docs/native_engine.md); weights packed once
  into the cache, reused after);
* llama.cpp: `llama-bench` (built by scripts/build_llama_cpp.sh; or $LLAMA_BENCH, or on PATH) on a Q4_0 GGUF of
  the shape written with the `gguf` package (every matrix Q4_0, output included);
* onnxruntime-genai: the builder's int4 output (block 128, accuracy_level 4) of the same random model exported as
  AutoAWQ (benchmarks/peers/genai_model.py); timed by benchmarks/peers/genai_runner.py.
Measures: decode tok/s at prompt 64 with 32 and 128 new tokens (batch 1), prefill tok/s at prompts 64 and 512.
Each round runs every engine once per measure in a rotating order (each in its own process, 2 threads); medians
and min-max over --rounds, and every round's value (`samples`, in round order). Two ratios ours/peer: of the
medians, and the median of the per-round ratios (`median_round_ratio`: each round measures the engines back to
back, so the machine's bandwidth drift over minutes cancels in the pair). A peer that is not installed is reported
as skipped.
Peak RSS: ours from the benchmark's own window over its timed runs; peers from the process (wait4 ru_maxrss).
Prints JSON lines (one per shape x measure x engine, then one per ratio) and a markdown table at the end.
Usage: python benchmarks/cpu_vs_peers.py [--shapes llama-3.2-1b llama-2-7b] [--rounds 3] [--work runs/peers]
       [--save] (also writes benchmarks/results/cpu_vs_peers.jsonl)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cpu_vs_peers.jsonl"
MEASURES = [("decode", 64, 32), ("decode", 64, 128), ("prefill", 64, 2), ("prefill", 512, 2)]
THREADS = 2


def run_rss(cmd: list[str], env: dict | None = None) -> tuple[str, int]:
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}) as proc:
        out = proc.stdout.read()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err[-2000:]}")
    return out, usage.ru_maxrss * 1024


REAL = "smollm2-135m"       # the real model: its own GGUF file for llama.cpp, checkpoints of it for the others
REAL_GROUP = 64             # hidden 576: 128 does not divide it


def real_gguf() -> Path:
    from edgeawq.default_models import packaged_model

    return next(packaged_model("smollm2").glob("*.gguf"))


def quantize_real(out: Path, *flags: str) -> Path:
    """RTN w4 g64 of the packaged SmolLM2 into `out` (speed does not depend on how the codes were chosen)."""
    if not (out / "config.json").exists():
        run_rss([sys.executable, "-m", "edgeawq.cli", "quantize", "--model", "smollm2", "--algorithm", "pergrp",
                 "--group_size", str(REAL_GROUP), "--out", str(out), "--quiet", *flags])
    return out


class Ours:
    name = "ours"

    def __init__(self, shape: str, work: Path) -> None:
        self.shape, self.env = shape, {"EDGEAWQ_CACHE": str(work / "cache")}
        self.checkpoint = work / f"{REAL}-w4g{REAL_GROUP}-head" if shape == REAL else None

    def available(self) -> str | None:
        return None

    def prepare(self) -> None:
        if self.checkpoint is not None:
            quantize_real(self.checkpoint, "--lm_head", "--lm_head_group_size", str(REAL_GROUP))
        self.measure("decode", 4, 2)             # exports into the cache on the first run

    def measure(self, kind: str, prompt: int, new: int) -> dict:
        model = ["--model", str(self.checkpoint)] if self.checkpoint is not None else [
            "--random_weights", "--model", self.shape, "--w_bit", "4", "--group_size", "128", "--lm_head",
            "--lm_head_group_size", "128"]
        out, _ = run_rss([sys.executable, "-m", "edgeawq.cli", "--task", "benchmark", *model,
                          "--dtype", "bf16", "--prompt_lengths", str(prompt), "--new_tokens", str(new),
                          "--repeats", "1", "--format", "json", "--compare_target", "none"], self.env)
        row = json.loads(out[out.index("{"):])["results"][0]
        return {"decode_tok_s": row["tokens_per_s"], "prefill_tok_s": row["prefill_tokens_per_s"],
                "peak_rss_bytes": row["peak_rss_bytes"]}


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, shape: str, work: Path) -> None:
        self.shape = shape
        self.gguf = real_gguf() if shape == REAL else work / f"{shape}-q4_0.gguf"
        candidates = [os.environ.get("LLAMA_BENCH"), str(ROOT / ".peers/llama.cpp/bin/llama-bench"),
                      shutil.which("llama-bench")]
        self.exe = next((c for c in candidates if c and Path(c).is_file()), None)

    def available(self) -> str | None:
        return None if self.exe else "llama-bench not found (bash scripts/build_llama_cpp.sh builds it)"

    def prepare(self) -> None:
        if self.shape != REAL and not self.gguf.exists():
            from peers.gguf_q4_0 import write_random_q4_0_gguf
            from edgeawq.runtime.random_model import read_shape

            write_random_q4_0_gguf(read_shape(self.shape), self.gguf)

    def measure(self, kind: str, prompt: int, new: int) -> dict:
        args = ["-p", str(prompt), "-n", "0"] if kind == "prefill" else ["-p", "0", "-n", str(new), "-d", str(prompt)]
        out, rss = run_rss([self.exe, "-m", str(self.gguf), "-t", str(THREADS), "-r", "1", "-o", "jsonl", *args])
        row = json.loads(out.strip().splitlines()[-1])
        key = "prefill_tok_s" if kind == "prefill" else "decode_tok_s"
        return {key: row["avg_ts"], "peak_rss_bytes": rss}


class OrtGenai:
    name = "onnxruntime-genai"

    def __init__(self, shape: str, work: Path) -> None:
        self.shape, self.awq, self.folder = shape, work / f"{shape}-autoawq", work / f"{shape}-genai-int4"

    def available(self) -> str | None:
        import importlib.util

        for module in ("onnxruntime_genai", "onnx_ir"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install -e '.[genai]')"
        return None

    def prepare(self) -> None:
        if not (self.folder / "genai_config.json").exists():
            from peers.genai_model import build_genai_model, write_random_autoawq

            if self.shape == REAL:
                quantize_real(self.awq, "--export", "awq")
            elif not (self.awq / "config.json").exists():
                write_random_autoawq(self.shape, self.awq)
            build_genai_model(self.awq, self.folder, THREADS, REAL_GROUP if self.shape == REAL else 128)

    def measure(self, kind: str, prompt: int, new: int) -> dict:
        runner = ROOT / "benchmarks" / "peers" / "genai_runner.py"
        out, rss = run_rss([sys.executable, str(runner), str(self.folder), str(prompt), str(new)])
        r = json.loads(out.strip().splitlines()[-1])
        return {"prefill_tok_s": prompt / r["prefill_s"], "decode_tok_s": r["decode_tokens"] / r["decode_s"],
                "peak_rss_bytes": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-2-7b"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--engines", nargs="+", default=["ours", "llama.cpp", "onnxruntime-genai"])
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--prepare_only", action="store_true", help="write the models of every engine, measure nothing")
    args = ap.parse_args()
    os.chdir(ROOT)
    args.work.mkdir(parents=True, exist_ok=True)
    classes = {c.name: c for c in (Ours, LlamaCpp, OrtGenai)}
    lines, table = [], []

    def emit(obj):
        print(json.dumps(obj), flush=True)
        lines.append(obj)

    for shape in args.shapes:
        engines = []
        for name in args.engines:
            engine = classes[name](shape, args.work)
            reason = engine.available()
            if reason:
                emit({"shape": shape, "engine": name, "skipped": reason})
                continue
            engine.prepare()
            engines.append(engine)
        if args.prepare_only:
            continue
        samples = {(e.name, m): [] for e in engines for m in MEASURES}
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[: r % len(engines)]
            for measure in MEASURES:
                for e in order:
                    samples[(e.name, measure)].append(e.measure(*measure))
        medians, values = {}, {}
        for (name, (kind, prompt, new)), runs in samples.items():
            key = "prefill_tok_s" if kind == "prefill" else "decode_tok_s"
            values[(name, kind, prompt, new)] = tok_s = [s[key] for s in runs]
            medians[(name, kind, prompt, new)] = statistics.median(tok_s)
            emit({"shape": shape, "engine": name, "measure": kind, "prompt_tokens": prompt,
                  "new_tokens": new if kind == "decode" else None, "median_tok_s": statistics.median(tok_s),
                  "min_tok_s": min(tok_s), "max_tok_s": max(tok_s), "rounds": len(tok_s), "samples": tok_s,
                  "peak_rss_bytes": max(s["peak_rss_bytes"] for s in runs), "threads": THREADS})
        paired = {}
        for (name, kind, prompt, new), value in medians.items():
            ours = values.get(("ours", kind, prompt, new))
            if name == "ours" or not ours:
                continue
            rounds = [a / b for a, b in zip(ours, values[(name, kind, prompt, new)])]
            paired[(name, kind, prompt, new)] = statistics.median(rounds)
            emit({"shape": shape, "ratio": f"ours/{name}", "measure": kind, "prompt_tokens": prompt,
                  "new_tokens": new if kind == "decode" else None,
                  "ratio_of_medians": medians[("ours", kind, prompt, new)] / value,
                  "median_round_ratio": statistics.median(rounds), "min_round_ratio": min(rounds),
                  "max_round_ratio": max(rounds)})
        table.append((shape, medians, paired))
    if args.save:
        RESULTS.write_text("".join(json.dumps(x) + "\n" for x in lines))
    names = [n for n in args.engines]
    print("\n| shape | measure | " + " | ".join(f"{n} tok/s" for n in names)
          + " | ours/peers: of the medians (median of the round ratios) |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for shape, medians, paired in table:
        for kind, prompt, new in MEASURES:
            cells = [medians.get((n, kind, prompt, new)) for n in names]
            ours = medians.get(("ours", kind, prompt, new))
            ratios = ", ".join(f"{ours / v:.2f}x ({paired[(n, kind, prompt, new)]:.2f}x) {n}"
                               for n, v in zip(names, cells) if n != "ours" and v and ours)
            label = f"decode (prompt {prompt}, {new} new)" if kind == "decode" else f"prefill {prompt}"
            print(f"| {shape} | {label} | " + " | ".join("skipped" if v is None else f"{v:.1f}" for v in cells)
                  + f" | {ratios} |")


if __name__ == "__main__":
    main()

"""Scale-out speed, memory and traffic per mesh, measured on this machine (JSON lines on stdout).

For each model shape (random weights, RTN w4 g128, written once as a checkpoint of this tool under
$EDGEAWQ_CACHE/bench-checkpoints, since every rank reads its slice from a checkpoint) and each configuration:

  1x1 x 2 threads             one process (the baseline), one prompt
  1x1 x 1 thread              one process, one core
  1x2 x 1 thread              tensor parallel, 2 ranks
  1x2 --pp 2                  tensor x pipeline, 4 ranks on 2 cores (oversubscribed)
  1x1 x 2 threads, batch 2    one process decoding two prompts together (the data-parallel baseline)
  2x1 x 1 thread, batch 2     data parallel, 2 ranks, one prompt per group

`run_awq benchmark --format json` runs (decode tok/s, prefill tok/s at one prompt length, median of --repeats
runs; tokens/s counts every row of a batch), in interleaved rounds; the line per configuration gives the median
over rounds, the ratio to the 1x1 x 2 threads baseline with the same batch in the same round, peak RSS and payload
bytes per decode token of every rank. A last line states
the communication model for a real multi-node run: per token, each tensor-parallel rank sends its all-reduce and
all-gather payload (bytes_reduced_per_token) over the link; at link bandwidth W and per-collective latency a the
added time per token is bytes / W + collectives x a (stated, not measured: this machine has no second host).

    python benchmarks/scale_out.py [--shapes llama-3.2-1b,qwen2.5-7b] [--rounds 2] [--prompt_length 64]
    python benchmarks/scale_out.py --table benchmarks/results/scale_out.jsonl     # the README table of such lines
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("1x1", 1, 2, 1), ("1x1", 1, 1, 1), ("1x2", 1, 1, 1), ("1x2", 2, 1, 1), ("1x1", 1, 2, 2),
           ("2x1", 1, 1, 2)]                                        # mesh, pp, threads per rank, batch
LINK_BYTES_PER_S = {"25GbE": 25e9 / 8, "100GbE": 100e9 / 8}
LINK_LATENCY_S = 20e-6          # per collective on a fast Ethernet link (assumed, stated)


def checkpoint_for(shape: str, root: Path) -> Path:
    """A random-weight w4 g128 checkpoint of `shape` (written once; the tool's own format, manifest included)."""
    import torch

    from edgeawq import default_models
    from edgeawq.checkpoints.quantized_format import QuantizedCheckpointWriter
    from edgeawq.kernels.qlinear import QLinearPerGrp
    from edgeawq.kernels.quantizer import QuantSpec
    from edgeawq.runtime.random_model import random_quantized_model

    out = root / f"{shape}-random-w4g128"
    if (out / "manifest.json").exists():
        return out
    t0 = time.perf_counter()
    spec = QuantSpec(4, 128, True)
    loaded = random_quantized_model(shape, spec, torch.bfloat16, torch.bfloat16)
    qconfig = {"bits": 4, "group_size": 128, "zero_point": True, "packing": "u4k", "scale_dtype": "float16",
               "algorithm": "rtn", "awq": None, "lm_head": False, "lm_head_group_size": None,
               "quantized_modules": list(loaded.family.linears), "fused_layout": False,
               "source_model": f"random:{shape}"}
    tensors = {}
    for name, module in loaded.model.named_modules():
        if isinstance(module, QLinearPerGrp):
            tensors.update({f"{name}.{k}": getattr(module, k) for k in ("packed", "scales", "zeros")})
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias
    quantized_prefixes = tuple(n.rsplit(".", 1)[0] + "." for n in tensors)
    for name, p in loaded.model.named_parameters():
        if not name.startswith(quantized_prefixes):
            tensors[name] = p.detach()
    if loaded.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    with QuantizedCheckpointWriter(out, loaded.config.to_dict(), qconfig,
                                   default_models.DEFAULT_MODELS[default_models.DEFAULT]) as writer:
        writer.write(tensors, {})
    print(json.dumps({"checkpoint": str(out), "shape": shape, "seconds": round(time.perf_counter() - t0, 1)}),
          file=sys.stderr, flush=True)
    return out


def run_config(ckpt: Path, mesh: str, pp: int, threads: int, batch: int, length: int, new_tokens: int,
               repeats: int) -> dict:
    cmd = [sys.executable, "-m", "edgeawq.cli", "benchmark", "--model", str(ckpt), "--prompt_lengths", str(length),
           "--new_tokens", str(new_tokens), "--repeats", str(repeats), "--batch", str(batch), "--format", "json"]
    if mesh != "1x1" or pp != 1:
        cmd += ["--mesh_shape", mesh, "--pp", str(pp), "--threads_per_rank", str(threads)]
    env = {**os.environ, "EDGEAWQ_QUIET": "1", "OMP_NUM_THREADS": str(threads)}
    if mesh == "1x1" and pp == 1:
        cmd = ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])] + cmd
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def table(lines: list[dict]) -> str:
    """The README's markdown table of this script's JSON lines (MB = 1e6 bytes, KB = 1e3)."""
    out = ["| shape | mesh | ranks x threads | batch | engine | decode tok/s | vs 1x1 x2 | prefill tok/s | vs 1x1 x2 | "
           "weights per rank (MB) | peak RSS per rank (MB) | payload per token per rank (KB) | collectives per token "
           "| model: added ms/token at 25 / 100 GbE |", "|" + "---|" * 14]
    for d in lines:
        if "decode_tokens_per_s" not in d:
            continue
        mesh = d["mesh_shape"] + (f" pp{d['pp']}" if d["pp"] > 1 else "")
        ranks = d.get("per_rank")
        join = lambda f: "/".join(f(r) for r in ranks) if ranks else "-"          # noqa: E731
        weights = join(lambda r: f"{r['weight_bytes'] / 1e6:.0f}")
        rss = join(lambda r: f"{r['peak_rss_bytes'] / 1e6:.0f}") if ranks else f"{d['peak_rss_bytes'] / 1e6:.0f}"
        payload = join(lambda r: f"{(r['bytes_reduced_per_token'] + r['bytes_sent_per_token']) / 1e3:.0f}") \
            if ranks else "0"
        model = d.get("model_added_ms_per_token")
        link = f"{model['25GbE']:.2f} / {model['100GbE']:.2f}" if model else "-"
        out.append(f"| {d['shape']} | {mesh} | {d['ranks']} x {d['threads_per_rank']} | {d.get('batch', 1)} | "
                   f"{d['engine'].split('/', 1)[1] if d['engine'].startswith('mesh ') else d['engine']} | "
                   f"{d['decode_tokens_per_s']:.2f} | "
                   f"{d['decode_vs_1x1_2threads']:.2f} | {d['prefill_tokens_per_s']:.1f} | "
                   f"{d['prefill_vs_1x1_2threads']:.2f} | {weights} | {rss} | {payload} | "
                   f"{d.get('collectives_per_token', 0)} | {link} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, default=None,
                    help="Print the markdown table of a JSON-lines file, then exit.")
    ap.add_argument("--shapes", default="llama-3.2-1b,qwen2.5-7b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt_length", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.table is not None:
        print(table([json.loads(x) for x in args.table.read_text().splitlines() if x.strip()]))
        return
    from edgeawq.runtime.model_identity import cache_root

    root = cache_root() / "bench-checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes.split(","):
        ckpt = checkpoint_for(shape, root)
        rounds: dict[tuple, list[dict]] = {c: [] for c in CONFIGS}
        for _ in range(args.rounds):
            for config in CONFIGS:                                   # interleaved: every config once per round
                rounds[config].append(run_config(ckpt, *config, args.prompt_length, args.new_tokens, args.repeats))
        for config, reports in rounds.items():
            mesh, pp, threads, batch = config
            base = rounds[("1x1", 1, 2, batch)]
            decode = [r["results"][0]["tokens_per_s"] for r in reports]
            prefill = [r["results"][0]["prefill_tokens_per_s"] for r in reports]
            line = {"shape": shape, "mesh_shape": mesh, "pp": pp, "threads_per_rank": threads, "batch": batch,
                    "ranks": reports[0].get("mesh", {}).get("world", 1), "engine": reports[0]["engine"],
                    "prompt_length": args.prompt_length, "new_tokens": args.new_tokens, "rounds": args.rounds,
                    "decode_tokens_per_s": statistics.median(decode),
                    "prefill_tokens_per_s": statistics.median(prefill),
                    "decode_vs_1x1_2threads": statistics.median(
                        r["results"][0]["tokens_per_s"] / b["results"][0]["tokens_per_s"] for r, b in zip(reports, base)),
                    "prefill_vs_1x1_2threads": statistics.median(
                        r["results"][0]["prefill_tokens_per_s"] / b["results"][0]["prefill_tokens_per_s"]
                        for r, b in zip(reports, base))}
            if "mesh" in reports[-1]:
                ranks = reports[-1]["mesh"]["ranks"]
                line["per_rank"] = [{k: r[k] for k in ("rank", "dp", "stage", "tp", "weight_bytes",
                                                       "peak_rss_bytes", "bytes_reduced_per_token", "bytes_sent_per_token",
                                                       "collectives_per_token")}
                                    for r in ranks]
                sent = max(r["bytes_reduced_per_token"] + r["bytes_sent_per_token"] for r in ranks)
                calls = max(r["collectives_per_token"] for r in ranks)
                line["collectives_per_token"] = calls
                line["model_added_ms_per_token"] = {
                    link: round(1e3 * (sent / bw + calls * LINK_LATENCY_S), 4) for link, bw in LINK_BYTES_PER_S.items()}
            else:
                line["peak_rss_bytes"] = reports[-1]["results"][0].get("peak_rss_bytes")
            print(json.dumps(line), flush=True)
    print(json.dumps({"communication_model": "added time per token on a real link = max over ranks of (payload "
                      "bytes sent per token) / link bandwidth + collectives per token x latency; bytes measured "
                      "above, bandwidths " + ", ".join(LINK_BYTES_PER_S) + f", latency {LINK_LATENCY_S * 1e6:g} us "
                      "per collective (assumed)", "measured_here": "loopback gloo on one 2-core machine"}))


if __name__ == "__main__":
    main()

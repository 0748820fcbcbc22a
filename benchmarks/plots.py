"""Plots of the committed benchmark results (benchmarks/results/*.jsonl) as PNGs beside them, for the README.

    python benchmarks/plots.py [--results benchmarks/results] [--out benchmarks/results]

Each plot is drawn from one result file, when it exists (nothing is measured here):
  quality.png           perplexity of float / RTN / AWQ per quantization config, per default model (quality.jsonl)
  cpu_vs_peers.png      decode and prefill tokens/s of ours, llama.cpp and onnxruntime-genai per shape and length,
                        medians with the min-max range of the rounds (cpu_vs_peers.jsonl)
  tt_precision.png      teacher-forced top-1 and perplexity ratio per tt precision config (tt_precision_sweep.jsonl)
Prints one JSON line per PNG written. Needs matplotlib (`pip install -e ".[plots]"`).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_quality(rows: list[dict], out: Path, plt) -> None:
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        float_ppl = next(r["perplexity"] for r in mine if r["method"] == "float")
        configs = [c for c in dict.fromkeys(r["config"] for r in mine if r["method"] != "float")]
        width = 0.38
        for k, method in enumerate(("rtn", "awq")):
            values = [next((r["perplexity"] for r in mine if r["config"] == c and r["method"] == method), None)
                      for c in configs]
            xs = [i + (k - 0.5) * width for i in range(len(configs))]
            ax.bar(xs, [v or 0 for v in values], width, label=method.upper())
        ax.axhline(float_ppl, color="black", linestyle="--", linewidth=1, label=f"float {float_ppl:.2f}")
        ax.set_xticks(range(len(configs)), configs, rotation=15)
        low = min(r["perplexity"] for r in mine)
        ax.set_ylim(low * 0.98, max(r["perplexity"] for r in mine) * 1.01)
        ax.set_title(f"{model}: test-split perplexity (lower is better)")
        ax.set_ylabel("perplexity")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_peers(rows: list[dict], out: Path, plt) -> None:
    runs = [r for r in rows if "engine" in r and "median_tok_s" in r]
    shapes = sorted({r["shape"] for r in runs})
    measures = ("decode", "prefill")
    fig, axes = plt.subplots(len(shapes), 2, figsize=(12, 3.6 * len(shapes)), squeeze=False)
    engines = ["ours", "llama.cpp", "onnxruntime-genai"]
    for row_axes, shape in zip(axes, shapes):
        for ax, measure in zip(row_axes, measures):
            mine = [r for r in runs if r["shape"] == shape and r["measure"] == measure]
            keys = sorted({(r["prompt_tokens"], r.get("new_tokens")) for r in mine})
            width = 0.8 / len(engines)
            for k, engine in enumerate(engines):
                found = {(r["prompt_tokens"], r.get("new_tokens")): r for r in mine if r["engine"] == engine}
                xs = [i + (k - 1) * width for i in range(len(keys))]
                med = [found[key]["median_tok_s"] if key in found else 0 for key in keys]
                err = [[m - found[key]["min_tok_s"] if key in found else 0 for key, m in zip(keys, med)],
                       [found[key]["max_tok_s"] - m if key in found else 0 for key, m in zip(keys, med)]]
                ax.bar(xs, med, width, yerr=err, capsize=3, label=engine)
            labels = [f"p{p}+{n}" if measure == "decode" else f"prompt {p}" for p, n in keys]
            ax.set_xticks(range(len(keys)), labels)
            ax.set_title(f"{shape}: {measure} tok/s (median, min-max of rounds)")
            ax.set_ylabel("tokens/s")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_tt(rows: list[dict], out: Path, plt) -> None:
    by_model = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    fig, axes = plt.subplots(1, len(by_model), figsize=(6 * len(by_model), 4), squeeze=False)
    for ax, (model, mine) in zip(axes[0], sorted(by_model.items())):
        labels = [r["config"] if r["config"] in ("performance", "accuracy") else f"MLP {r['mlp']}" for r in mine]
        ax.bar(range(len(mine)), [100 * r["top1"] for r in mine], color="tab:blue", label="top-1 %")
        ax.set_ylim(min(100 * r["top1"] for r in mine) - 3, 100)
        ax.set_xticks(range(len(mine)), labels, rotation=20, fontsize=8)
        ax.set_ylabel("teacher-forced top-1 vs float (%)")
        twin = ax.twinx()
        twin.plot(range(len(mine)), [r["ppl"] / r["reference_ppl"] for r in mine], "o-", color="tab:red",
                  label="perplexity / float")
        twin.set_ylabel("perplexity / float")
        ax.set_title(f"{model}: tt precision configs")
        ax.legend(loc="lower left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


PLOTS = {"quality.png": ("quality.jsonl", plot_quality), "cpu_vs_peers.png": ("cpu_vs_peers.jsonl", plot_peers),
         "tt_precision.png": ("tt_precision_sweep.jsonl", plot_tt)}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (source, draw) in PLOTS.items():
        path = args.results / source
        if not path.exists():
            continue
        draw(read_jsonl(path), args.out / name, plt)
        written.append(args.out / name)
        print(json.dumps({"plot": str(args.out / name), "from": str(path)}))
    return written


if __name__ == "__main__":
    main()

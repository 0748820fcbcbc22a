"""benchmarks/quantize_speed.py runs `run_awq quantize` in its own process and reports per-layer time, the
projection and peak RSS; the README's quantization-time table holds the committed measurements."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_benchmark_measures_a_whole_real_model(tmp_path):
    env = {**os.environ, "EDGEAWQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quantize_speed.py"), "--models", "smollm2-135m",
                           "--algorithm", "pergrp", "--out", str(tmp_path / "speed.jsonl")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "speed.jsonl").read_text().splitlines()[0])
    assert row["model"] == "smollm2-135m" and row["weights"] == "real" and row["algorithm"] == "rtn"
    assert row["layers_run"] == row["layers_full"] == 30 and row["group_size"] == 64
    assert 0 < row["s_per_layer_median"] <= row["s_per_layer_max"] and row["peak_rss_mb"] > 200
    assert row["quantize_s"] <= row["wall_s"] and "| smollm2-135m |" in proc.stdout


def test_the_readme_table_holds_the_committed_measurements():
    lines = [json.loads(x) for x in (ROOT / "benchmarks/results/quantize_speed.jsonl").read_text().splitlines() if x]
    readme = (ROOT / "README.md").read_text().split("## Quantization time at real sizes", 1)[1].split("\n## ", 1)[0]
    assert {r["model"] for r in lines} == {"smollm2-135m", "llama-3.2-1b", "llama-2-7b"}
    for r in lines:
        assert f"| {r['s_per_layer_median']:.1f} | {r['layers_run']} / {r['layers_full']} |" in readme, r
        assert f"| {r['peak_rss_mb'] / 1024:.1f} GiB |" in readme, r
    seven_b = next(r for r in lines if r["model"] == "llama-2-7b")
    assert seven_b["peak_rss_mb"] <= 4096 and seven_b["projected_full_h"] <= 6        # the targets
    assert f"{seven_b['projected_full_h']:.2f} h (projected)" in readme

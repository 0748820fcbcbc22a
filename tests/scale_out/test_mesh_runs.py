"""Every mesh gives the single-process result: greedy tokens identical and logits within 1e-3 on the fp32
PyTorch reference engine, the native engine within its int8-activation rounding; data-parallel groups return the
batch in the caller's order (the probe's batch of 5 left-padded prompts is split between the groups)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeawq.scale_out.launcher import RunSettings, run
from edgeawq.scale_out.partition import parse_mesh

from probe import run_model

DEFAULT_RUNS = [("llama", "torch", "fp32"), ("qwen2", "torch", "fp32"), ("llama-w4g64", "torch", "fp32"),
                ("qwen2-w4g64", "torch", "fp32"), ("llama-w4g64", "native", "bf16"), ("qwen2-w4g64", "native", "bf16")]
W8A8_RUNS = [("llama-w8a8", "torch", "fp32"), ("llama-w8a8", "native", "fp32")]
QWEN7B_RUNS = [("qwen7b-heads-w4g32", "torch", "fp32"), ("qwen7b-heads-w4g32", "native", "bf16")]


def specs(mesh_models, runs):
    return [dict(path=mesh_models[name], engine=engine, act_dtype=act) for name, engine, act in runs]


def on_mesh(mesh: str, runs: list[dict], tmp_path: Path, pp: int = 1) -> list[dict]:
    out = tmp_path / f"probe-{mesh}-{pp}.pt"
    run(RunSettings(parse_mesh(mesh, pp), 1, 120.0, False, True), "probe:probe", {"runs": runs, "out": str(out)})
    return torch.load(out, weights_only=True)


_references: dict = {}


def reference(spec: dict) -> dict:
    key = repr(sorted(spec.items()))
    if key not in _references:
        _references[key] = run_model(**spec)
    return _references[key]


def assert_same_as_single_process(runs: list[dict], results: list[dict], mesh: str, w8a8: bool = False) -> None:
    """`w8a8`: the checkpoint quantizes activations to int8 on every engine (the native tolerance throughout)."""
    for spec, got in zip(runs, results, strict=True):
        ref = reference(spec)
        assert got["engine"].startswith("mesh ") and got["engine"].endswith(spec["engine"] if spec["engine"] ==
                                                                            "torch" else got["engine"][-10:])
        assert torch.equal(got["tokens"], ref["tokens"]), (mesh, spec)
        diff = max((got[k] - ref[k]).abs().max().item() for k in ("prefill", "logits"))
        if spec["engine"] == "torch" and not w8a8:
            assert diff <= 1e-3, (mesh, spec, diff)
        else:                        # int8 activations: a last-bit change of a sum can move one rounding step
            assert diff <= 1e-2 * ref["logits"].abs().max().item(), (mesh, spec, diff)


@pytest.mark.parametrize("mesh, pp", [("1x2", 1), ("2x1", 1), ("1x4", 1), ("2x2", 1), ("1x2", 2), ("1x1", 4)])
def test_meshes_of_the_default_models_give_the_single_process_result(mesh_models, mesh, pp, tmp_path):
    runs = specs(mesh_models, DEFAULT_RUNS)
    assert_same_as_single_process(runs, on_mesh(mesh, runs, tmp_path, pp), f"{mesh} pp{pp}")


@pytest.mark.parametrize("mesh, pp", [("2x1", 1), ("1x1", 2)])
def test_w8a8_checkpoints_on_data_and_pipeline_meshes(mesh_models, mesh, pp, tmp_path):
    """Per-tensor W8A8 (static act_scale on every rank; one group per channel, so no tensor parallelism)."""
    runs = specs(mesh_models, W8A8_RUNS)
    assert_same_as_single_process(runs, on_mesh(mesh, runs, tmp_path, pp), f"{mesh} pp{pp}", w8a8=True)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["2x4", "1x8", "1x32", "8x4"])
def test_the_qwen7b_head_layout_on_the_seed_meshes(mesh_models, mesh, tmp_path):
    runs = specs(mesh_models, QWEN7B_RUNS)
    assert_same_as_single_process(runs, on_mesh(mesh, runs, tmp_path), mesh)


def run_awq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEAWQ_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "edgeawq.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_decode_on_a_mesh_prints_and_writes_what_one_process_does(mesh_models, tmp_path):
    common = ["decode", "--model", mesh_models["qwen2-w4g64"], "--prompt", "The hacker ethic", "--prompt", "A bug",
              "--prompt", "Unix", "--max_new_tokens", "12", "--engine", "torch", "--act_dtype", "fp32"]
    single = run_awq(*common, "--output", str(tmp_path / "single.json"))
    mesh = run_awq(*common, "--output", str(tmp_path / "mesh.json"), "--mesh_shape", "2x2")
    assert single.returncode == 0 and mesh.returncode == 0, mesh.stderr
    assert mesh.stdout == single.stdout
    assert "[mesh] mesh 2x2" in mesh.stderr and "engine mesh 2x2/torch" in mesh.stderr
    a, b = (json.loads((tmp_path / f).read_text())["results"] for f in ("single.json", "mesh.json"))
    assert [r["completion"] for r in a] == [r["completion"] for r in b]


def test_perplexity_and_accuracy_on_a_mesh(mesh_models):
    args = ["--model", mesh_models["llama-w4g64"], "--engine", "torch", "--act_dtype", "fp32", "--seqlen", "128",
            "--nsamples", "5", "--format", "json"]
    single = run_awq("perplexity", *args)
    mesh = run_awq("perplexity", *args, "--mesh_shape", "2x1", "--pp", "2")   # 2 windows per forward
    assert single.returncode == 0 and mesh.returncode == 0, mesh.stderr
    p1, p2 = json.loads(single.stdout)["perplexity"], json.loads(mesh.stdout)["perplexity"]
    assert abs(p1 - p2) <= 1e-5 * p1
    acc = run_awq("accuracy", "--model", mesh_models["llama-w4g64"], "--seqlen", "64", "--nsamples", "2",
                  "--pcc_tokens", "2", "--format", "json", "--mesh_shape", "1x2")
    assert acc.returncode == 0, acc.stderr
    report = json.loads(acc.stdout)
    assert report["engine"].startswith("mesh 1x2/native") and report["top1"] > 0.9 and report["mean_pcc"] > 0.99


def test_benchmark_on_a_mesh_reports_memory_and_traffic_per_rank(mesh_models):
    """Each tensor-parallel rank holds about half the weights and sends, per decode token, one all-reduce of the hidden
    state per row-parallel Linear and for the embedding, and its share of the logits."""
    run = run_awq("benchmark", "--model", mesh_models["qwen7b-heads-w4g32"], "--mesh_shape", "1x2",
                  "--prompt_lengths", "8", "--new_tokens", "3", "--repeats", "1", "--format", "json")
    assert run.returncode == 0, run.stderr
    mesh = json.loads(run.stdout)["mesh"]
    assert mesh["mesh_shape"] == "1x2" and mesh["world"] == 2
    a, b = mesh["ranks"]
    hidden, layers, vocab = 256, 2, 4096
    expected = (2 * layers + 1) * hidden * 4 + vocab // 2 * 4
    assert a["bytes_reduced_per_token"] == b["bytes_reduced_per_token"] == expected
    # the MLP's 37 groups split 19 / 18: rank 0 holds one group of gate, up and down more
    assert 0 < a["weight_bytes"] - b["weight_bytes"] <= 0.01 * b["weight_bytes"]
    assert a["peak_rss_bytes"] > a["weight_bytes"]


def test_benchmark_on_data_parallel_groups_decodes_a_row_per_group(mesh_models):
    run = run_awq("benchmark", "--model", mesh_models["llama-w4g64"], "--mesh_shape", "2x1", "--prompt_lengths", "8",
                  "--new_tokens", "3", "--repeats", "1", "--format", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["batch"] == report["results"][0]["batch"] == 2

"""The npu and tt targets on a mesh: ONNX Runtime sessions per rank (segment graphs) and the tt emulation per chip
(`--tt_mesh`), against the same target in one process; their caches per device layout."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_mesh_runs import on_mesh, reference

from edgeawq.scale_out.partition import parse_mesh, resolve_mesh
from edgeawq.errors import UserError


def spec(path: str, target: str, engine: str = "auto", **options) -> dict:
    return dict(path=path, engine=engine, act_dtype="fp32", target=target, options=options)


def pcc(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


# --- ONNX Runtime per rank -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mesh, pp", [("1x2", 1), ("2x1", 1), ("2x2", 1), ("1x1", 2)])
def test_onnx_runtime_sessions_per_rank_give_the_single_process_result(mesh_models, mesh, pp, tmp_path):
    """fp32 compute (accuracy_level 0): the single-process logits within 1e-3 and the same tokens, float and w4;
    the npu target (its provider list; the CPU provider here) and the cpu target's --engine onnx alike."""
    runs = [spec("default-llama", "npu", accuracy_level=0), spec(mesh_models["qwen2-w4g64"], "npu", accuracy_level=0),
            spec(mesh_models["llama-w4g64"], "cpu", "onnx", accuracy_level=0)]
    for s, got in zip(runs, on_mesh(mesh, runs, tmp_path, pp), strict=True):
        ref = reference(s)
        assert got["engine"].startswith(f"mesh {mesh}") and "onnxruntime/" in got["engine"]
        assert torch.equal(got["tokens"], ref["tokens"]), (mesh, s)
        diff = max((got[k] - ref[k]).abs().max().item() for k in ("prefill", "logits"))
        assert diff <= 1e-3, (mesh, s, diff)


def test_onnx_runtime_with_int8_activations_on_a_mesh(mesh_models, tmp_path):
    """accuracy_level 4 (MatMulNBits quantizes activations to int8 per block): cuts fall on block boundaries, only
    the order of the sums differs, as with the native engine."""
    runs = [spec(mesh_models["qwen2-w4g64"], "npu")]
    got, ref = on_mesh("1x2", runs, tmp_path)[0], reference(runs[0])
    assert torch.equal(got["tokens"], ref["tokens"])
    assert (got["prefill"] - ref["prefill"]).abs().max().item() <= 1e-2 * ref["logits"].abs().max().item()


# --- tt emulation per chip -----------------------------------------------------------------------------------------
def test_tt_mesh_without_tensor_parallel_is_the_single_chip_emulation(mesh_models, tmp_path):
    """Data-parallel groups and pipeline stages add no rounding: tokens identical, logits within float summation
    order (BLAS blocking differs with the batch share; one bf16 flip at most)."""
    runs = [spec("default-llama", "tt"), spec(mesh_models["qwen2-w4g64"], "tt", tt_precision="accuracy")]
    for mesh, pp in (("2x1", 1), ("1x1", 2)):
        for s, got in zip(runs, on_mesh(mesh, runs, tmp_path, pp), strict=True):
            ref = reference(s)
            assert got["engine"].startswith(f"mesh {mesh}") and "tt-emulation" in got["engine"]
            assert torch.equal(got["tokens"], ref["tokens"]), (mesh, pp, s)
            assert (got["logits"] - ref["logits"]).abs().max().item() <= 1e-2 * ref["logits"].abs().max().item()


@pytest.mark.parametrize("mesh", ["1x2", "1x4"])
def test_tt_tensor_parallel_rounds_each_chips_partial_as_the_device_does(mesh_models, mesh, tmp_path):
    """Each chip writes its partial o/down output in bf16 before the all-reduce, so the mesh differs from one chip
    by about one bf16 step of the reduced activations per chip: same first greedy token on every row, prefill logits
    PCC >= 0.999 and within 3% of the largest logit (measured on 1x2: PCC 0.99997, 0.10-0.13 of 15; on 1x4 PCC
    0.9998)."""
    runs = [spec("default-llama", "tt"), spec(mesh_models["qwen2-w4g64"], "tt", tt_precision="accuracy")]
    for s, got in zip(runs, on_mesh(mesh, runs, tmp_path), strict=True):
        ref = reference(s)
        assert torch.equal(got["tokens"][:, 0], ref["tokens"][:, 0]), (mesh, s)
        assert pcc(got["prefill"], ref["prefill"]) >= 0.999
        assert (got["prefill"] - ref["prefill"]).abs().max().item() <= 0.03 * ref["logits"].abs().max().item()
        assert (got["prefill"] - ref["prefill"]).abs().max().item() > 0        # the partials are rounded


def run_awq(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeawq.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "EDGEAWQ_QUIET": "1", **(env or {})}, timeout=timeout)


def test_tt_mesh_by_name_keeps_a_weight_cache_per_device_layout(mesh_models, tmp_path):
    """`--tt_mesh N300`: 2 chips, each converting only its own slice once (a cache folder per slice, the slice's
    shapes in its record), reused by the next run; accuracy against the float model close to one chip's."""
    cache = tmp_path / "cache"
    args = ["accuracy", "--model", mesh_models["qwen2-w4g64"], "--target", "tt", "--seqlen", "64", "--nsamples", "2",
            "--pcc_tokens", "2", "--format", "json"]
    env = {"EDGEAWQ_CACHE": str(cache)}
    single = run_awq(*args, env=env)
    first = run_awq(*args, "--tt_mesh", "N300", env=env)
    assert single.returncode == 0 and first.returncode == 0, first.stderr
    folders = sorted((cache / "tt").iterdir())
    assert len(folders) == 3                                       # one chip's weights, and one per N300 chip
    records = [json.loads((f / "tt_weights.json").read_text()) for f in folders]
    wqkv = sorted(r["tensors"]["layers.0.wqkv"]["shape"][1] for r in records)
    assert wqkv == [256, 256, 512]                                 # q 4 heads + k/v 2 + 2 of 64 -> halves
    stamps = {f: (f / "weights.safetensors").stat().st_mtime_ns for f in folders}
    again = run_awq(*args, "--tt_mesh", "N300", env=env)
    assert again.returncode == 0, again.stderr
    assert {f: (f / "weights.safetensors").stat().st_mtime_ns for f in folders} == stamps
    assert "reusing converted weights" in again.stderr
    a, b = json.loads(single.stdout), json.loads(first.stdout)
    assert b["engine"].startswith("mesh 1x2/tt-emulation")
    assert abs(a["top1"] - b["top1"]) <= 0.05 and abs(a["mean_pcc"] - b["mean_pcc"]) <= 0.01
    assert json.loads(again.stdout)["top1"] == b["top1"]


@pytest.mark.slow
@pytest.mark.parametrize("name, mesh", [("T3K", "1x8"), ("TG", "8x4"), ("TG", "1x32")])
def test_tt_systems_on_the_qwen7b_head_layout(mesh_models, name, mesh, tmp_path):
    """T3K (8 chips) and TG (32 chips, as 8x4 and 1x32) run the Qwen2.5-7B head layout (28 query / 4 KV heads:
    padding heads and replicated KV heads on 8 and 32 chips). Its random weights give near-flat logits, so a
    first greedy token may differ from one chip's, but only where one chip's logits make it a near tie."""
    assert resolve_mesh(mesh, 1, name, "tt") == parse_mesh(mesh)
    runs = [spec(mesh_models["qwen7b-heads-w4g32"], "tt")]
    got, ref = on_mesh(mesh, runs, tmp_path)[0], reference(runs[0])
    assert pcc(got["prefill"], ref["prefill"]) >= 0.999
    last = ref["prefill"][:, -1]                                                   # (B, V) one chip's logits
    diff = (got["prefill"][:, -1] - last).abs().max().item()
    chosen = last.gather(1, got["tokens"][:, :1])[:, 0]
    assert (chosen >= last.max(-1).values - 2 * diff).all(), (chosen, last.max(-1).values, diff)
    assert (got["tokens"][:, 0] == ref["tokens"][:, 0]).sum() >= 3


def test_tt_mesh_names_and_their_errors():
    assert resolve_mesh("1x1", 1, "n300", "tt") == parse_mesh("1x2")
    assert resolve_mesh("1x1", 1, "T3K", "tt") == parse_mesh("1x8")
    assert resolve_mesh("1x1", 1, "N150", "tt").single
    assert resolve_mesh("4x4", 2, "TG", "tt") == parse_mesh("4x4", 2)
    assert resolve_mesh("8x4", 1, "TG", "tt") == parse_mesh("8x4")
    assert resolve_mesh("1x1", 1, None, "cpu").single
    with pytest.raises(UserError, match="needs --target tt"):
        resolve_mesh("1x1", 1, "N300", "cpu")
    with pytest.raises(UserError, match="T3K has 8 chips.*asks for 4 ranks"):
        resolve_mesh("2x2", 1, "T3K", "tt")
    with pytest.raises(UserError, match="not a Tenstorrent system"):
        resolve_mesh("1x1", 1, "P150", "tt")


def test_onnx_segment_cache_per_slice_is_checked_before_use(mesh_models, tmp_path):
    """`--target npu --mesh_shape 1x2`: each rank writes its slice's segment graphs once; the next run reuses them;
    a damaged segment file is found by its recorded hash and written again (saying so), with the same output."""
    cache = tmp_path / "cache"
    args = ["decode", "--model", mesh_models["qwen2-w4g64"], "--target", "npu", "--mesh_shape", "1x2", "--prompt",
            "The hacker ethic", "--max_new_tokens", "8"]
    env = {"EDGEAWQ_CACHE": str(cache)}
    first = run_awq(*args, env=env)
    assert first.returncode == 0, first.stderr
    folders = sorted((cache / "onnx-mesh").iterdir())
    assert len(folders) == 2
    records = [json.loads((f / "edgeawq_segments.json").read_text()) for f in folders]
    assert {r["slice"].split("; ")[1] for r in records} == {"q heads [0, 1]", "q heads [2, 3]"}
    assert all(set(r["files"]) >= {"attn.0.onnx", "mlp.3.onnx.data", "head.onnx"} for r in records)
    stamps = [(f / "attn.0.onnx.data").stat().st_mtime_ns for f in folders]
    again = run_awq(*args, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    assert [(f / "attn.0.onnx.data").stat().st_mtime_ns for f in folders] == stamps
    data = folders[1] / "mlp.2.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    repaired = run_awq(*args, env=env)
    assert repaired.returncode == 0 and repaired.stdout == first.stdout, repaired.stderr
    assert (folders[1] / "mlp.2.onnx.data").read_bytes() != bytes(raw)

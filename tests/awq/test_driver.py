"""Streaming quantization end to end on tiny random checkpoints (RTN, AWQ run, llm-awq cache round trip)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeawq.errors import UserError
from edgeawq.kernels.formats import unpack
from edgeawq.kernels.quantizer import QuantSpec, quantize


from ..conftest import quantize_tiny

run = quantize_tiny


def test_rtn_equals_direct_quantization(checkpoints, tmp_path):
    run(checkpoints["qwen2"], tmp_path / "rtn", awq_mode="none", w_bit=3)
    got = load_file(tmp_path / "rtn" / "model.safetensors")
    src = load_file(checkpoints["qwen2"] / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    qw = quantize(src[name + ".weight"], QuantSpec(3, 32))
    assert torch.equal(unpack(got[name + ".packed"], "u4k"), qw.codes)
    assert torch.equal(got[name + ".scales"], qw.scales) and torch.equal(got[name + ".zeros"], qw.zeros)
    assert torch.equal(got["model.layers.0.self_attn.q_proj.bias"], src["model.layers.0.self_attn.q_proj.bias"])
    q = json.loads((tmp_path / "rtn" / "config.json").read_text())["quantization_config"]
    assert q["bits"] == 3 and q["container_bits"] == 4 and q["packing"] == "u4k" and q["algorithm"] == "rtn"


def test_awq_run_is_deterministic_and_cache_round_trips(checkpoints, tmp_path):
    run(checkpoints["llama2"], tmp_path / "a", dump_awq=str(tmp_path / "awq.pt"))
    run(checkpoints["llama2"], tmp_path / "b")
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    cache = torch.load(tmp_path / "awq.pt", weights_only=True)
    # llama2 config is multi-head: the v_proj -> o_proj group applies (4 groups per layer)
    assert len(cache["scale"]) == 2 * 4 and len(cache["clip"]) == 2 * 5
    assert cache["scale"][0][0] == "model.layers.0.input_layernorm"
    run(checkpoints["llama2"], tmp_path / "c", awq_mode="load", awq_cache=str(tmp_path / "awq.pt"))
    ta, tc = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert ta.keys() == tc.keys()
    for k in ta:
        assert torch.allclose(ta[k].float(), tc[k].float(), atol=1e-6) if ta[k].is_floating_point() \
            else (ta[k] != tc[k]).float().mean() < 1e-3, k


def test_gqa_skips_the_v_o_group(checkpoints, tmp_path):
    run(checkpoints["llama3"], tmp_path / "g", dump_awq=str(tmp_path / "g.pt"))
    groups = [names for _, names, _ in torch.load(tmp_path / "g.pt", weights_only=True)["scale"]]
    assert not any("o_proj" in n[0] for n in groups) and len(groups) == 2 * 3


def test_lm_head_quantized_with_its_own_group_size(checkpoints, tmp_path):
    run(checkpoints["llama3"], tmp_path / "h", awq_mode="none", lm_head=True, lm_head_group_size=64)
    t = load_file(tmp_path / "h" / "model.safetensors")
    assert t["lm_head.scales"].shape == (4096, 1) and "model.embed_tokens.weight" in t
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["quantization_config"]["lm_head_group_size"] == 64


def test_group_size_must_divide_k(checkpoints, tmp_path):
    with pytest.raises(UserError, match=r"model.layers.0.self_attn.q_proj: its input size K=64 .* g=128"):
        run(checkpoints["llama3"], tmp_path / "x", group_size=128, awq_mode="none")
    assert not (tmp_path / "x").exists()


def test_awq_load_needs_a_cache(checkpoints, tmp_path):
    with pytest.raises(UserError, match="--awq_cache"):
        run(checkpoints["llama3"], tmp_path / "x", awq_mode="load")


def test_quantizing_a_quantized_checkpoint_is_refused(checkpoints, tmp_path):
    run(checkpoints["llama3"], tmp_path / "q", awq_mode="none")
    with pytest.raises(UserError, match="already a quantized checkpoint"):
        run(tmp_path / "q", tmp_path / "qq", awq_mode="none")

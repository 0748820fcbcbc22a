"""GPTQ over a real transformers decoder layer (awq/gptq_layer.py) and `run_awq quantize --algorithm gptq`."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from edgeawq.awq.gptq import GptqOptions, gptq_quantize
from edgeawq.awq.gptq_layer import gptq_layer
from edgeawq.kernels.formats import unpack
from edgeawq.kernels.quantizer import QuantSpec, quantize
from edgeawq.runtime.families import FAMILIES
from edgeawq.runtime.module_paths import get_module

from ..conftest import quantize_tiny

FAMILY = FAMILIES["llama"]
SPEC = QuantSpec(4, 32)


@pytest.fixture(scope="module")
def layer_and_inputs(checkpoints):
    """Layer 0 of the tiny llama3 checkpoint (float32), 3 chunks (2, 48, D) of its input, the rotary tables."""
    model = AutoModelForCausalLM.from_pretrained(checkpoints["llama3"], torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (6, 48), generator=gen)
    with torch.no_grad():
        chunks = [model.model.embed_tokens(c) for c in ids.split(2)]
        pos = model.model.rotary_emb(chunks[0], torch.arange(48)[None])
    return model.model.layers[0], chunks, pos


def _forward(layer, chunks, pos):
    with torch.no_grad():
        return [layer(c, position_embeddings=pos, attention_mask=None) for c in chunks]


def test_each_linear_is_rounded_with_the_hessian_of_its_input_after_the_earlier_ones(layer_and_inputs):
    """True sequential: o_proj's Hessian comes from the layer with q/k/v quantized, and so on; checked against
    Hessians recorded from full forwards of a copy whose earlier Linears hold the dequantized weights."""
    original, chunks, pos = layer_and_inputs
    layer = copy.deepcopy(original)
    outputs, got = gptq_layer(layer, FAMILY, "model.layers.0.", SPEC, GptqOptions(), list(chunks), pos)
    probe = copy.deepcopy(original)
    for names in FAMILY.input_sharing_linears:
        seen = []
        handle = get_module(probe, names[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        _forward(probe, chunks, pos)
        handle.remove()
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])         # (tokens, K)
        H = 2 * X.T @ X / X.shape[0]
        for name in names:
            want = gptq_quantize(get_module(original, name).weight, H, SPEC, GptqOptions())
            same = (got[name].codes == want.codes).float().mean().item()
            assert same > 0.999, (name, same)
            assert torch.allclose(got[name].scales.float(), want.scales.float(), rtol=2e-3), name
            with torch.no_grad():
                get_module(probe, name).weight.copy_(got[name].dequantize())
    for out, want in zip(outputs, _forward(layer, chunks, pos)):       # the quantized layer's own output
        assert torch.allclose(out, want, atol=1e-6)


def test_gptq_layer_output_is_closer_to_the_float_layer_than_rtn(layer_and_inputs):
    original, chunks, pos = layer_and_inputs
    reference = _forward(original, chunks, pos)
    gptq_out, _ = gptq_layer(copy.deepcopy(original), FAMILY, "model.layers.0.", QuantSpec(3, 32), GptqOptions(),
                             list(chunks), pos)
    rtn = copy.deepcopy(original)
    with torch.no_grad():
        for name in FAMILY.linears:
            lin = get_module(rtn, name)
            lin.weight.copy_(quantize(lin.weight, QuantSpec(3, 32)).dequantize())
    rtn_out = _forward(rtn, chunks, pos)
    err = lambda outs: sum(((o - r) ** 2).sum().item() for o, r in zip(outs, reference))
    print(f"layer output squared error: gptq {err(gptq_out):.4g}, rtn {err(rtn_out):.4g}")
    assert err(gptq_out) < 0.9 * err(rtn_out)


@pytest.mark.parametrize("algorithm", ["gptq", "awq+gptq"])
def test_quantize_with_gptq_writes_a_deterministic_checkpoint_recording_its_settings(checkpoints, tmp_path,
                                                                                     algorithm):
    options = dict(algorithm=algorithm, awq_mode="run", gptq_damp=0.05, act_order=True)
    summary = quantize_tiny(checkpoints["llama3"], tmp_path / "a", **options)
    quantize_tiny(checkpoints["llama3"], tmp_path / "b", **options)
    assert summary["algorithm"] == algorithm
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    q = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert q["algorithm"] == algorithm and q["gptq"]["damp"] == 0.05 and q["gptq"]["act_order"] is True
    assert (q["awq"] is None) == (algorithm == "gptq")
    got = load_file(tmp_path / "a" / "model.safetensors")
    src = load_file(checkpoints["llama3"] / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    rtn = quantize(src[name + ".weight"], SPEC)
    assert not torch.equal(unpack(got[name + ".packed"], "u4k"), rtn.codes)  # GPTQ moved codes off the RTN ones


@pytest.mark.parametrize("flags, needle", [
    (["--act_order"], "--act_order is a GPTQ option, but --algorithm is awq"),
    (["--gptq_damp", "0.1", "--algorithm", "pergrp"], "--gptq_damp is a GPTQ option, but --algorithm is pergrp"),
    (["--algorithm", "gptq", "--dump_awq", "s.pt"], "--dump_awq is an AWQ option, but --algorithm gptq runs no AWQ"),
    (["--algorithm", "gptq", "--awq", "load", "--awq_cache", "s.pt"],
     "--awq load is an AWQ option, but --algorithm gptq runs no AWQ"),
    (["--algorithm", "pergrp", "--awq_cache", "s.pt"], "--awq_cache is an AWQ option, but --algorithm pergrp"),
    (["--awq_cache", "s.pt"], "--awq_cache is read by --awq load only, and --awq is run"),
    (["--awq", "none", "--awq_cache", "s.pt"], "--awq_cache is read by --awq load only, and --awq is none"),
])
def test_a_flag_the_algorithm_would_ignore_is_refused(checkpoints, tmp_path, cli, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "q")] + flags)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "q").exists() and not (tmp_path / "s.pt").exists()

"""SmoothQuant's scales and their folding (awq/smoothquant.py) on a real transformers decoder layer."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgeawq.awq.smoothquant import (WEIGHT_SPEC, SmoothQuantOptions, check_act_quant, check_alpha, smooth_layer,
                                     smoothing_scales, smoothquant_layer)
from edgeawq.errors import UserError
from edgeawq.runtime.families import FAMILIES
from edgeawq.runtime.module_paths import get_module

FAMILY = FAMILIES["llama"]


@pytest.fixture(scope="module")
def layer_and_inputs(checkpoints):
    """Layer 0 of the tiny llama2 checkpoint (float32, no GQA: every scale group applies), 3 chunks (2, 40, D) of
    its input with outlier channels (x20 on three hidden channels, as in real LLM activations), rotary tables."""
    model = AutoModelForCausalLM.from_pretrained(checkpoints["llama2"], torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (6, 40), generator=gen)
    with torch.no_grad():
        chunks = [model.model.embed_tokens(c) for c in ids.split(2)]
        for c in chunks:
            c[..., [1, 7, 30]] *= 20.0
        pos = model.model.rotary_emb(chunks[0], torch.arange(40)[None])
    return model.model.layers[0], chunks, pos


def _run(layer, chunks, pos):
    with torch.no_grad():
        return [layer(c, position_embeddings=pos, attention_mask=None) for c in chunks]


def test_smoothing_leaves_the_layer_function_unchanged(layer_and_inputs):
    original, chunks, pos = layer_and_inputs
    layer = copy.deepcopy(original)
    outputs, smoothed = smooth_layer(layer, FAMILY, list(chunks), pos, alpha=0.5)
    assert set(smoothed.scales) == {g.prev_op for g in FAMILY.scale_groups}    # llama2: v and o have one shape
    want = _run(original, chunks, pos)
    got = _run(layer, chunks, pos)
    for w, o, g in zip(want, outputs, got):
        assert torch.equal(w, o)                                  # the returned outputs: the float layer's
        assert torch.allclose(w, g, atol=1e-5, rtol=1e-4), (w - g).abs().max()
    for prev, (_, s) in smoothed.scales.items():
        assert not torch.allclose(s, torch.ones_like(s)), prev    # something did move


def test_scales_follow_the_formula_and_flatten_the_inputs(layer_and_inputs):
    """s = max|X|^a / max|W|^(1-a) from the original layer's recorded inputs and weights; at a = 0.5 the smoothed
    input's channel maxima equal the smoothed weights' column maxima; the outlier channels shrink."""
    original, chunks, pos = layer_and_inputs
    seen = {}
    probe = copy.deepcopy(original)
    names = [g.linears[0] for g in FAMILY.scale_groups]
    hooks = [get_module(probe, n).register_forward_pre_hook(
        lambda m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))) for n in names]
    _run(probe, chunks, pos)
    for h in hooks:
        h.remove()
    layer = copy.deepcopy(original)
    _, smoothed = smooth_layer(layer, FAMILY, list(chunks), pos, alpha=0.5)
    for group in FAMILY.scale_groups:
        X = torch.cat(seen[group.linears[0]])                                           # (tokens, K)
        W = torch.cat([get_module(original, n).weight for n in group.linears])          # (N, K)
        want = (X.abs().amax(0).sqrt() / W.abs().amax(0).sqrt()).clamp(min=1e-5)
        s = smoothed.scales[group.prev_op][1]
        assert torch.allclose(s, want, rtol=1e-5), group.prev_op
        x_max = smoothed.input_absmax[group.linears[0]]
        assert torch.allclose(x_max, (X / s).abs().amax(0), rtol=1e-5)
        W_s = W * s                # the columns as folded (later folds rescale rows of v and up only)
        assert torch.allclose(x_max, W_s.abs().amax(0), rtol=1e-4), group.prev_op
        for n in group.linears:
            cols = get_module(layer, n).weight.abs().amax(0) / get_module(original, n).weight.abs().amax(0)
            if n not in ("self_attn.v_proj", "mlp.up_proj"):
                assert torch.allclose(cols, s, rtol=1e-4), n
    qkv_in = smoothed.input_absmax["self_attn.q_proj"]
    raw = torch.cat(seen["self_attn.q_proj"]).abs().amax(0)
    assert qkv_in.max() / qkv_in.median() < 0.5 * raw.max() / raw.median()   # the outliers are tamed


def test_dead_channels_and_alpha_bounds():
    x = torch.tensor([0.0, 4.0, 9.0])
    w = torch.tensor([[1.0, 0.0, 4.0], [2.0, 0.0, 1.0]])
    s = smoothing_scales(x, [w], 0.5)
    assert torch.allclose(s, torch.tensor([1.0, 1.0, 1.5]))       # a zero channel of X or W keeps scale 1
    assert torch.allclose(smoothing_scales(x, [w], 1.0), torch.tensor([1.0, 1.0, 9.0]))
    assert check_alpha(0.0) == 0.0 and check_alpha(1) == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="--sq_alpha"):
            check_alpha(bad)


@pytest.mark.parametrize("mode", ["per_token", "per_tensor"])
def test_smoothquant_layer_rounds_int8_per_channel_and_calibrates_static_scales(layer_and_inputs, mode):
    """Every Linear: symmetric int8 codes per output row (zero 128, scale max|row| / 127 of the smoothed weight);
    per_tensor: act_scale = the largest smoothed calibration input / 127 (q/k/v share it), per_token: none. bf16
    input chunks (the calibration dtype on BF16 machines) come back as bf16 outputs."""
    original, chunks, pos = layer_and_inputs
    layer = copy.deepcopy(original)
    smoothed_copy = copy.deepcopy(original)
    _, expected = smooth_layer(smoothed_copy, FAMILY, list(chunks), pos, alpha=0.5)
    outputs, quantized, act_scales = smoothquant_layer(layer, FAMILY, "model.layers.0.",
                                                       SmoothQuantOptions(0.5, mode), list(chunks), pos)
    assert set(quantized) == set(FAMILY.linears)
    for name, qw in quantized.items():
        w = get_module(smoothed_copy, name).weight
        assert qw.spec == WEIGHT_SPEC and torch.equal(qw.zeros, torch.full_like(qw.zeros, 128))
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).half()
        assert torch.equal(qw.scales, scale)
        assert (qw.dequantize() - w).abs().max() <= 0.5 * scale.float().max() * 1.001
    if mode == "per_token":
        assert act_scales == {}
    else:
        assert set(act_scales) == set(FAMILY.linears)
        for name, s in act_scales.items():
            assert s.dtype == torch.float32 and s.shape == (1,)
            assert s.item() == pytest.approx(expected.input_absmax[name].max().item() / 127, rel=1e-6)
        attn = [f"{FAMILY.attn}.{p}" for p in (FAMILY.q, FAMILY.k, FAMILY.v)]
        assert len({act_scales[n].item() for n in attn}) == 1
    bf16_out, _, _ = smoothquant_layer(copy.deepcopy(original), FAMILY, "model.layers.0.",
                                       SmoothQuantOptions(0.5, mode), [c.bfloat16() for c in chunks[:1]], pos)
    assert bf16_out[0].dtype == torch.bfloat16 and len(outputs) == len(chunks)


def test_act_quant_modes_are_checked():
    assert check_act_quant("per_tensor") == "per_tensor"
    with pytest.raises(UserError, match="per_token, per_tensor"):
        check_act_quant("per_channel")

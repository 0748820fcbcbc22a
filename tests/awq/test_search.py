"""AWQ pieces on synthetic data: scale search, clip search, folding, calibration blocks."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgeawq.awq.calibration import calibration_blocks
from edgeawq.awq.clip_search import apply_clip, search_clip
from edgeawq.awq.folding import fold_scales
from edgeawq.awq.scale_search import search_scales
from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.errors import UserError
from edgeawq.kernels.quantizer import QuantSpec, fake_quantize
from edgeawq.runtime.model_loader import load_model


def outlier_inputs(seed=0, tokens=512, K=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, K, generator=g)
    x[:, :8] *= 30.0  # a few salient input channels, as in real LLM activations
    return x


def test_scale_search_beats_rtn_on_salient_channels():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128, bias=False)
    x = outlier_inputs()
    spec = QuantSpec(3, 128)
    res = search_scales([x[:256], x[256:]], [lin], lambda c, i: lin(c), spec, ["fc"])
    assert res.loss <= res.rtn_loss and res.alpha > 0
    assert res.loss < 0.7 * res.rtn_loss
    # the search restores the weights and returns the scales in the normalised form
    w = lin.weight.detach()
    assert torch.allclose(res.scales.max() * res.scales.min(), torch.tensor(1.0), atol=1e-4)
    assert torch.equal(w, lin.weight.detach())


def test_scale_search_alpha_zero_is_rtn():
    torch.manual_seed(1)
    lin = nn.Linear(128, 64, bias=False)
    x = torch.randn(64, 128)  # no salient channels: RTN may win, and then s = 1 exactly
    res = search_scales([x], [lin], lambda c, i: lin(c), QuantSpec(4, 64), ["fc"], n_grid=20)
    assert res.loss <= res.rtn_loss
    if res.alpha == 0:
        assert torch.allclose(res.scales, torch.ones(128))


def test_clip_search_never_increases_the_error():
    torch.manual_seed(2)
    w = torch.randn(64, 256)
    w[:, 5] *= 8  # outlier weights make clipping worthwhile
    x = outlier_inputs(3)
    spec = QuantSpec(3, 128)
    max_val = search_clip(w, x, spec)
    absmax = w.view(64, 2, 128).abs().amax(-1)
    assert (max_val <= absmax + 1e-6).all() and (max_val >= absmax * 0.55 - 1e-6).all()
    clipped = w.clone()
    apply_clip(clipped, max_val)
    err = lambda ww: (x @ (fake_quantize(ww, spec) - w).t()).pow(2).mean()
    assert err(clipped) <= err(w) * 1.0001


def test_folding_preserves_the_float_function():
    torch.manual_seed(3)
    loaded = load_model(DEFAULT_MODELS["default-llama"])
    layer = loaded.model.model.layers[0]
    x = torch.randn(2, 16, 256)
    pe = loaded.model.model.rotary_emb(x, torch.arange(16)[None])
    before = layer(x, position_embeddings=pe)
    s1, s2 = torch.rand(256) + 0.5, torch.rand(768) + 0.5
    fold_scales(layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], s1)
    fold_scales(layer.mlp.up_proj, [layer.mlp.down_proj], s2)
    assert torch.allclose(layer(x, position_embeddings=pe), before, atol=1e-4, rtol=1e-4)


def test_calibration_blocks_are_seeded(tmp_path):
    tok = load_model(DEFAULT_MODELS["default-llama"]).tokenizer
    a = calibration_blocks(tok, None, 4, 64, seed=5)
    assert a.shape == (4, 64) and torch.equal(a, calibration_blocks(tok, None, 4, 64, seed=5))
    assert not torch.equal(a, calibration_blocks(tok, None, 4, 64, seed=6))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Line {i} of some calibration text."}) for i in range(50)))
    assert calibration_blocks(tok, str(jsonl), 2, 32).shape == (2, 32)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [f"Parquet row {i} with words." for i in range(50)]}), tmp_path / "c.parquet")
    assert calibration_blocks(tok, str(tmp_path / "c.parquet"), 2, 32).shape == (2, 32)
    with pytest.raises(UserError, match="fewer than --seqlen"):
        calibration_blocks(tok, str(jsonl), 2, 100000)
    with pytest.raises(UserError, match="local Hugging Face datasets"):
        calibration_blocks(tok, "no-such-org/no-such-dataset", 2, 32)

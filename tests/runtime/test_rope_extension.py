"""Contexts beyond max_position_embeddings where the RoPE scaling implies them (runtime/rope_extension.py): the
limit per RoPE type, the tables against transformers' rotary module at every position (dynamic: driven one token
at a time), every engine decoding past the trained length against transformers, and the refusals (exit 2)."""
from __future__ import annotations

import pytest
import torch
import transformers

from edgeawq.cpu_backend import native_build
from edgeawq.evaluation.parity import pcc
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.engines import TransformersEngine
from edgeawq.runtime.model_loader import load_model
from edgeawq.runtime.rope_extension import context_limit, rope_tables
from edgeawq.tt_backend.backend import make_tt_engine

from ..conftest import TINY, quantize_tiny, write_model

TRAINED = 32
ROPES = {   # name -> rope_parameters; the tiny models are trained (max_position_embeddings) to 32 positions
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": TRAINED},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                 "short_factor": [1.0] * 8, "long_factor": [1.5] * 8},
}
LIMITS = {"default": 32, "linear": 64, "dynamic": 128, "yarn": 128, "llama3": 64, "longrope": 64}


def config_for(rope: str):
    return transformers.LlamaConfig(**{**TINY, "max_position_embeddings": TRAINED, "num_key_value_heads": 2,
                                       "tie_word_embeddings": False, "rope_parameters": ROPES[rope]})


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_context_limit_is_what_the_scaling_implies(rope):
    assert context_limit(config_for(rope)) == LIMITS[rope]


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_tables_equal_the_rotary_module_at_every_position(rope):
    """Row p = transformers' rotary module at position p; for dynamic, with the sequence grown one token at a time
    (the module rescales its base past the trained length)."""
    config = config_for(rope)
    module = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config=config)
    cos, sin = rope_tables(module, config)                                      # (limit, hd) each
    assert cos.shape == (LIMITS[rope], TINY["head_dim"])
    probe = torch.zeros(1, 1)
    fresh = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config=config)
    with torch.no_grad():
        if rope == "dynamic":
            rows = [fresh(probe, torch.tensor([[p]])) for p in range(LIMITS[rope])]
            want_cos = torch.cat([c[0] for c, _ in rows])
            want_sin = torch.cat([s[0] for _, s in rows])
        else:
            c, s = fresh(probe, torch.arange(LIMITS[rope])[None])
            want_cos, want_sin = c[0], s[0]
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    if rope != "default":                                                       # the scaling changes something
        base = rope_tables(transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(
            config=config_for("default")), config_for("default"), LIMITS[rope])[0]
        assert not torch.allclose(cos[-1], base[-1], atol=1e-3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """rope -> (float checkpoint, RTN w4 g32 checkpoint) of a tiny Llama trained to 32 positions."""
    root = tmp_path_factory.mktemp("rope")
    out = {}
    for rope in ("linear", "dynamic", "yarn"):
        src = write_model(root / rope, config_for(rope))
        quantize_tiny(src, root / f"{rope}-w4", algorithm="pergrp", awq_mode="none")
        out[rope] = (src, root / f"{rope}-w4")
    return out


def decode_logits(engine, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits (T, V) of `tokens` (T,): one prefill call of `prefill` tokens, then one token per call."""
    T = tokens.shape[0]
    engine.start(1, T)
    mask = torch.ones(1, T, dtype=torch.long)
    out = [engine.forward(tokens[None, :prefill], torch.arange(prefill)[None], mask[:, :prefill], last_only=False)[0]]
    for t in range(prefill, T):
        out.append(engine.forward(tokens[None, t:t + 1], torch.tensor([[t]]), mask[:, :t + 1])[0])
    return torch.cat(out).float()


def make(kind: str, loaded):
    if kind == "tt":
        return make_tt_engine(loaded, "accuracy")
    if kind == "native" and native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    return BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine=kind))


@pytest.mark.parametrize("rope", ["linear", "dynamic", "yarn"])
@pytest.mark.parametrize("kind", ["native", "onnx", "tt"])
def test_engines_decode_past_the_trained_length_like_transformers(models, rope, kind, tmp_path, monkeypatch):
    """Prefill 20 tokens, then decode one token at a time to the context limit (4x or 2x the trained 32
    positions): every step's logits against transformers running the same checkpoint with its own cache."""
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    src, quantized = models[rope]
    path = src if kind == "tt" else quantized
    limit = LIMITS[rope]
    tokens = torch.randint(3, TINY["vocab_size"], (limit,), generator=torch.Generator().manual_seed(1))
    want = decode_logits(TransformersEngine(load_model(path, "fp32", "fp32")), tokens, 20)     # (limit, V)
    got = decode_logits(make(kind, load_model(path, "fp32", "fp32")), tokens, 20)
    beyond = sorted(pcc(a, b) for a, b in zip(got[TRAINED:], want[TRAINED:]))
    # int8 activations (native, onnx) or bf16 block floats (tt) alone: medians 0.998-0.9993, a few dips to 0.95 where
    # a rounding flip changes the step; tables of the unscaled RoPE: medians 0.22-0.30
    assert beyond[len(beyond) // 2] >= 0.995 and beyond[0] >= 0.95, beyond


def test_max_seq_len_past_a_default_rope_is_refused(cli, tmp_path):
    src = write_model(tmp_path / "plain", config_for("default"))
    code, _, err = cli(["decode", "--model", str(src), "--engine", "torch", "--max_seq_len", "40", "--prompt", "Hi"])
    assert code == 2 and "32 tokens" in err and "'default' does not scale" in err and "Traceback" not in err


def test_max_seq_len_past_the_scaling_limit_is_refused(cli, models):
    code, _, err = cli(["decode", "--model", str(models["yarn"][1]), "--max_seq_len", "129", "--prompt", "Hi"])
    assert code == 2 and "128 tokens" in err and "yarn RoPE scaling" in err and "--max_seq_len 128" in err


def test_decode_runs_past_the_trained_length(cli, models, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    code, out, err = cli(["decode", "--model", str(models["yarn"][1]), "--max_seq_len", "100", "--prompt", "Hi",
                          "--max_new_tokens", "60", "--ignore_eos"])
    assert code == 0, err

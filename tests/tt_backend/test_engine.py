"""The tt emulation engine: structure against the PyTorch reference (every family, left padding, decode steps),
the KV cache in the config's format, and error ordering performance > accuracy > lossless."""
from __future__ import annotations

import json

import pytest
import torch

from edgeawq.runtime.engines import TransformersEngine
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.parity import pcc
from edgeawq.tt_backend import engine as engine_module
from edgeawq.tt_backend.backend import make_tt_engine
from edgeawq.tt_backend.device_pack import device_round_trip

from ..conftest import FAMILY_CONFIGS

PROMPTS = [list(range(5, 25)), list(range(40, 52)), [7, 8, 9]]  # 20, 12, 3 tokens (window 8 for mistral)
HIFI4 = {k: "hifi4" for k in ("li_ff1_3", "li_ff2", "li_qkv_decode", "li_o_decode", "sdpa_decode",
                              "li_qkv_prefill", "li_o_prefill", "sdpa_prefill")}
LOSSLESS = {"tensor_precision": {k: "bf16" for k in ("ff1_3", "ff2", "wqkv", "wo", "kv_cache")},
            "op_fidelity": HIFI4, "lm_head": "bf16", "li_lm_head": "hifi4"}


def _config(tmp_path, settings: dict) -> str:
    path = tmp_path / "precision.json"
    path.write_text(json.dumps(settings))
    return str(path)


def _run(engine, steps: int = 4) -> list[torch.Tensor]:
    """Logits of a left-padded batch: one prefill call, then `steps` decode calls on fixed tokens."""
    ids, mask, positions = left_pad(PROMPTS, pad_id=2)
    engine.start(ids.shape[0], 64)
    out = [engine.forward(ids, positions, mask, last_only=False)[mask.bool()]]     # (real tokens, V)
    for step in range(steps):
        token = torch.tensor([[100 + step], [200 + step], [300 + step]])
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        positions = positions[:, -1:] + 1
        out.append(engine.forward(token, positions, mask)[:, -1])                  # (B, V)
    return out


def _reference(path) -> list[torch.Tensor]:
    return _run(TransformersEngine(load_model(path, "fp32", "fp32")))


def _bf16_exact(path):
    loaded = load_model(path, "fp32", "fp32")
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.copy_(p.bfloat16().float())
    return loaded


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_structure_equals_the_reference_without_device_rounding(checkpoints, tmp_path, monkeypatch, family):
    """RoPE, GQA, q/k/v bias, sliding window, left padding, the KV cache: with the device's roundings switched off
    (activations, cache and matmul operands kept in fp32) and bf16-exact weights in bf16 format, the engine equals
    transformers in fp32."""
    ref = _run(TransformersEngine(_bf16_exact(checkpoints[family])))
    monkeypatch.setattr(engine_module, "bf16", lambda x: x.float())
    monkeypatch.setattr(engine_module, "stored", lambda x, fmt: x.float())
    monkeypatch.setattr(engine_module, "fidelity_matmul_srca", lambda x, a, fidelity, acc: x.float() @ a)
    monkeypatch.setattr(engine_module.SrcA, "of", staticmethod(lambda t, need_hi=True: t.float()))   # no operand truncation
    got = _run(make_tt_engine(_bf16_exact(checkpoints[family]), _config(tmp_path, LOSSLESS)))
    for a, b in zip(ref, got):
        assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_lossless_config_is_as_close_as_bf16_transformers(checkpoints, tmp_path, family):
    """bf16 weights and cache, HiFi4 with fp32 accumulation: only bf16 activations remain, so the logits are as
    close to fp32 as transformers run in bf16 is (minimum per-row PCC, with a 0.002 margin)."""
    ref = _run(TransformersEngine(load_model(checkpoints[family], "fp32", "fp32")))
    bf16_ref = _run(TransformersEngine(load_model(checkpoints[family], "bf16", "bf16")))
    got = _run(make_tt_engine(load_model(checkpoints[family], "fp32", "fp32"), _config(tmp_path, LOSSLESS)))
    floor = min(pcc(x, y) for a, b in zip(ref, bf16_ref) for x, y in zip(a, b))
    assert min(pcc(x, y) for a, b in zip(ref, got) for x, y in zip(a, b)) >= floor - 0.002


def test_kv_cache_holds_the_configured_format(checkpoints, tmp_path):
    settings = {"base": "accuracy", "decoders": {"1": {"tensor_precision": {"kv_cache": "bfp4"}}}}
    engine = make_tt_engine(load_model(checkpoints["llama3"], "fp32", "fp32"), _config(tmp_path, settings))
    _run(engine, steps=2)
    S = engine.length
    for layer, bits in ((0, 8), (1, 4)):
        for cache in (engine.k, engine.v):
            held = cache[layer, :, :, :S]
            assert torch.equal(device_round_trip(held, bits), held)                 # values of the format
            assert held.abs().sum() > 0
    assert not torch.equal(device_round_trip(engine.k[1, :, :, :S], 4), engine.k[0, :, :, :S])


def test_error_grows_as_precision_drops(checkpoints, tmp_path):
    ref = torch.cat(_reference(checkpoints["llama2"]))
    err = {}
    for name in ("performance", "accuracy", "lossless"):
        spec = _config(tmp_path, LOSSLESS) if name == "lossless" else name
        got = torch.cat(_run(make_tt_engine(load_model(checkpoints["llama2"], "fp32", "fp32"), spec)))
        err[name] = ((got - ref).norm() / ref.norm()).item()
    assert err["performance"] > err["accuracy"] > err["lossless"]


def test_decode_one_token_at_a_time_matches_prefill(checkpoints, tmp_path):
    """With the same settings for both modes, feeding tokens one by one gives the one-pass logits."""
    engine = make_tt_engine(load_model(checkpoints["qwen2"], "fp32", "fp32"),
                            "accuracy")        # Qwen2 accuracy: the same fidelity in both modes
    ids = torch.tensor([list(range(30, 46))])
    engine.start(1, 32)
    whole = engine.forward(ids, torch.arange(16)[None], torch.ones_like(ids), last_only=False)[0]
    engine.start(1, 32)
    steps = [engine.forward(ids[:, p:p + 1], torch.tensor([[p]]), torch.ones(1, p + 1, dtype=torch.long))[0, -1]
             for p in range(16)]
    assert all(pcc(a, b) >= 0.9999 for a, b in zip(whole, steps))
    assert torch.equal(whole.argmax(-1), torch.stack(steps).argmax(-1))


def test_held_memory_counts_the_emulated_cache_and_weight_copies(checkpoints, tmp_path):
    """kv_bytes: keys and values of batch x max_seq_len slots (float32); weights_bytes: at least every stored
    weight tensor once (SrcA views that are the tensor itself add nothing)."""
    engine = make_tt_engine(load_model(checkpoints["llama3"], "fp32", "fp32"), "accuracy")
    assert engine.kv_bytes == 0
    _run(engine, steps=1)
    c = load_model(checkpoints["llama3"], "fp32", "fp32").config
    per_slot = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert engine.kv_bytes == 3 * 64 * per_slot
    stored = sum(t.nbytes for t in engine.weights.tensors.values())
    hi = sum(a.hi.nbytes for a in engine.srca.values() if a.hi is not None)
    assert stored <= engine.weights_bytes <= stored + hi + sum(a.full.nbytes for a in engine.srca.values())

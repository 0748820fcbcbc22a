"""Weight conversion into the tt cache: values, reuse, sharing across fidelity-only changes, and damaged caches."""
from __future__ import annotations

import json

import pytest
import torch

from edgeawq.errors import UserError
from edgeawq.runtime.model_loader import load_model
from edgeawq.tt_backend.blockfloat import TILE_BYTES, round_trip
from edgeawq.tt_backend.precision import load_precision, with_mlp
from edgeawq.tt_backend.weights import RECORD, WEIGHTS, ensure_weights

from ..conftest import quantize_tiny


def test_values_are_the_block_float_weights(checkpoints):
    loaded = load_model(checkpoints["qwen2"], "fp32", "fp32")
    layer = loaded.model.model.layers[0]
    w = ensure_weights(loaded, load_precision("performance", "qwen2", 2))
    t = w.tensors
    assert torch.equal(t["layers.0.ff1"], round_trip(layer.mlp.gate_proj.weight.t(), 4))       # bfp4
    assert torch.equal(t["layers.0.ff2"], round_trip(layer.mlp.down_proj.weight.t(), 8))       # bfp8
    qkv = torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])
    assert torch.equal(t["layers.0.wqkv"], round_trip(qkv.t(), 8))
    assert torch.equal(t["layers.0.bqkv"], torch.cat([layer.self_attn.q_proj.bias, layer.self_attn.k_proj.bias,
                                                      layer.self_attn.v_proj.bias]).bfloat16().float())
    assert torch.equal(t["embed"], loaded.model.model.embed_tokens.weight.bfloat16().float())
    K, N = t["layers.0.ff1"].shape
    assert w.stored_bytes["layers.0.ff1"] == -(-K // 32) * -(-N // 32) * TILE_BYTES[4]


def test_quantized_checkpoints_convert_their_dequantized_weights(checkpoints, tmp_path):
    q = tmp_path / "q"
    quantize_tiny(checkpoints["llama2"], q, awq_mode="none", algorithm="pergrp")
    loaded = load_model(q, "fp32", "bf16")
    deq = loaded.model.model.layers[1].self_attn.o_proj.dequantized_weight(torch.float32)
    w = ensure_weights(loaded, load_precision("accuracy", "llama", 2))
    assert torch.equal(w.tensors["layers.1.wo"], round_trip(deq.t(), 8))


def test_converted_once_then_reused(checkpoints, capsys):
    loaded = load_model(checkpoints["llama3"], "fp32", "fp32")
    first = ensure_weights(loaded, load_precision("accuracy", "llama", 2))
    assert "[tt] converting" in capsys.readouterr().err
    stamp = (first.folder / WEIGHTS).stat().st_mtime_ns
    # a config that only changes fidelity shares the folder; the record is read, nothing is rewritten
    accuracy = load_precision("accuracy", "llama", 2)
    other_fidelity = accuracy.__class__(accuracy.name, accuracy.layers, accuracy.lm_head, "hifi4")
    again = ensure_weights(loaded, other_fidelity)
    assert "[tt] reusing" in capsys.readouterr().err
    assert again.folder == first.folder and (first.folder / WEIGHTS).stat().st_mtime_ns == stamp
    assert all(torch.equal(again.tensors[k], first.tensors[k]) for k in first.tensors)
    swept = ensure_weights(loaded, with_mlp(accuracy, "bfp4", "bfp4", "sweep"))
    assert swept.folder != first.folder
    record = json.loads((swept.folder / RECORD).read_text())
    assert record["tensors"]["layers.0.ff2"] == {"format": "bfp4", "shape": [128, 64]}
    assert record["ttnn"] is None


def test_damaged_caches_are_rebuilt_and_stale_ones_named(checkpoints, capsys):
    loaded = load_model(checkpoints["llama3"], "fp32", "fp32")
    cfg = load_precision("performance", "llama", 2)
    first = ensure_weights(loaded, cfg)
    folder = first.folder
    good = (folder / WEIGHTS).read_bytes()
    for damaged in (good[:len(good) // 2] + bytes(255 - b for b in good[len(good) // 2:]), b"\x00" * 64):
        (folder / WEIGHTS).write_bytes(damaged)        # random-looking bytes in the tiles, then a truncated file
        capsys.readouterr()
        again = ensure_weights(loaded, cfg)
        assert "is damaged" in capsys.readouterr().err and (folder / WEIGHTS).read_bytes() == good
        assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    record = json.loads((folder / RECORD).read_text())
    record["format_version"] = 0
    (folder / RECORD).write_text(json.dumps(record))
    with pytest.raises(UserError, match="another checkpoint state"):
        ensure_weights(loaded, cfg)

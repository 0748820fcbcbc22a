"""Quantized checkpoints: exact save/load, manifest verification, atomic replacement, AutoAWQ GEMM interop."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from edgeawq.errors import UserError
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.runtime.model_loader import load_model

from ..conftest import quantize_tiny

IDS = torch.tensor([[0, 17, 300, 4000, 5, 6, 7, 8]])


quantize = quantize_tiny


def logits(path, **kw):
    with torch.no_grad():
        return load_model(path, **kw).model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def native(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "native"
    quantize(checkpoints["qwen2"], out)
    return out


def test_save_load_is_bit_identical(native):
    stored = load_file(native / "model.safetensors")
    model = load_model(native).model
    buffers = dict(model.named_buffers())
    params = dict(model.named_parameters())
    for name, t in stored.items():
        loaded = buffers.get(name, params.get(name))
        assert loaded is not None, name
        assert loaded.dtype == t.dtype or t.dtype == torch.bfloat16, name
        assert torch.equal(loaded.to(t.dtype), t), name
    assert isinstance(model.model.layers[0].self_attn.q_proj, QLinearPerGrp)
    assert torch.equal(logits(native), logits(native))


def test_quantized_logits_stay_close_to_float(checkpoints, native):
    q, f = logits(native, act_dtype="fp32"), logits(checkpoints["qwen2"])
    assert torch.nn.functional.cosine_similarity(q.flatten(), f.flatten(), dim=0) > 0.95


def test_fused_engine_runs_quantized_checkpoint(native):
    from edgeawq.runtime.engines import StaticCacheEngine, TransformersEngine
    from edgeawq.runtime.generate import left_pad

    ids, mask, pos = left_pad([IDS[0].tolist(), [0, 9, 10]], 2)
    out = []
    for cls in (TransformersEngine, StaticCacheEngine):
        engine = cls(load_model(native, act_dtype="fp32"))
        engine.start(2, 32)
        out.append(engine.forward(ids, pos, mask, last_only=False)[mask.bool()])
    assert (out[0] - out[1]).abs().max() <= 1e-4


def test_corrupt_file_is_named(native, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(native, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model.safetensors is corrupt"):
        load_model(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model.safetensors listed in the manifest is missing"):
        load_model(bad)


def test_failed_save_leaves_previous_checkpoint_intact(checkpoints, native, tmp_path, monkeypatch):
    import shutil

    from edgeawq.awq import driver

    dest = tmp_path / "dest"
    shutil.copytree(native, dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    calls = {"n": 0}
    real = driver.quantize_layer

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the middle of the save")
        return real(*a, **k)

    monkeypatch.setattr(driver, "quantize_layer", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        quantize(checkpoints["qwen2"], dest, w_bit=3)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # no temporary folder left behind
    monkeypatch.setattr(driver, "quantize_layer", real)
    quantize(checkpoints["qwen2"], dest, w_bit=3)  # a successful save replaces it
    assert json.loads((dest / "config.json").read_text())["quantization_config"]["bits"] == 3


def test_sharded_quantized_checkpoint(checkpoints, tmp_path):
    quantize(checkpoints["llama3"], tmp_path / "s", awq_mode="none", max_shard_bytes=5_000)
    assert (tmp_path / "s" / "model.safetensors.index.json").exists()
    quantize(checkpoints["llama3"], tmp_path / "one", awq_mode="none")
    assert torch.equal(logits(tmp_path / "s"), logits(tmp_path / "one"))


def unpack_autoawq_independently(qweight, qzeros, scales, group):
    """W[k, n] = (q - z[k // g, n]) * s[k // g, n], from the docs/quantization.md description, one nibble at a time."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    K, C = qweight.shape
    N = C * 8
    q = torch.zeros(K, N)
    z = torch.zeros(qzeros.shape[0], N)
    for c in range(C):
        for i in range(8):
            q[:, 8 * c + order[i]] = ((qweight[:, c].to(torch.int64) & 0xFFFFFFFF) >> (4 * i) & 0xF).float()
            z[:, 8 * c + order[i]] = ((qzeros[:, c].to(torch.int64) & 0xFFFFFFFF) >> (4 * i) & 0xF).float()
    k_group = torch.arange(K) // group
    return ((q - z[k_group]) * scales.float()[k_group]).t()   # (N, K)


def test_autoawq_export_unpacks_to_the_native_weights(checkpoints, native, tmp_path):
    quantize(checkpoints["qwen2"], tmp_path / "awq", export="awq")
    cfg = json.loads((tmp_path / "awq" / "config.json").read_text())["quantization_config"]
    assert cfg == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                   "modules_to_not_convert": None}
    exported = load_file(tmp_path / "awq" / "model.safetensors")
    native_model = load_model(native).model
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"):
        w = unpack_autoawq_independently(exported[name + ".qweight"], exported[name + ".qzeros"],
                                         exported[name + ".scales"], 32)
        module = native_model.get_submodule(name)
        assert torch.equal(w, module.dequantized_weight()), name
    assert exported["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float16


def test_autoawq_import_reproduces_logits(checkpoints, tmp_path):
    quantize(checkpoints["llama3"], tmp_path / "awq", export="awq")
    imported = load_model(tmp_path / "awq", act_dtype="fp32")
    assert isinstance(imported.model.model.layers[1].mlp.gate_proj, QLinearPerGrp)
    # the AutoAWQ layout stores float tensors in fp16: compare with the native checkpoint rounded the same way
    native = tmp_path / "nat"
    quantize(checkpoints["llama3"], native)
    ref = load_model(native, act_dtype="fp32").model
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
        a, b = imported.model(input_ids=IDS).logits, ref(input_ids=IDS).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw,needle", [(dict(w_bit=3), "only 4-bit"), (dict(lm_head=True), "lm_head"),
                                       (dict(group_size=-1), "finite group size")])
def test_autoawq_export_refusals(checkpoints, tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        quantize(checkpoints["llama3"], tmp_path / "x", export="awq", awq_mode="none", **kw)

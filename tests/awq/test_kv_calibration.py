"""`run_awq quantize --calibrate_kv`: calibrated int8 KV cache channel scales (awq/kv_calibration.py), stored in the
checkpoint, loaded, and used by the native engine and the reference engine (--kv_scales)."""
from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from edgeawq.awq.calibration import calibration_blocks
from edgeawq.cpu_backend import native_build
from edgeawq.evaluation.parity import pcc
from edgeawq.kernels.kv_quant import KVPrecision
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model, open_checkpoint
from edgeawq.runtime.quantized_model import kv_channel_scales

from ..conftest import quantize_tiny
from ..cpu_backend.test_kv_cache import prompts
from ..cpu_backend.test_native_engine import native_math_forward

CALIBRATION = dict(n_samples=4, seqlen=64, seed=0)


@pytest.fixture(scope="module")
def calibrated(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kvcal")
    out = {}
    for family in ("llama3", "qwen2"):
        out[family] = root / family
        quantize_tiny(checkpoints[family], out[family], algorithm="pergrp", awq_mode="none", calibrate_kv=True,
                      search_dtype="fp32", **CALIBRATION)
    return out


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_scales_are_the_float_models_ranges(checkpoints, calibrated, family):
    """Per layer: value scale x 127 = max |v| per channel, key scale x 127 = max norm of each RoPE channel pair, over
    the float model's keys and values on the calibration blocks (read back from its KV cache, after RoPE; a key
    never exceeds its channel's range, whatever its position's rotation)."""
    folder = calibrated[family]
    state = load_file(folder / "model.safetensors")
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["kv_cache"]["scales"] == "per_channel"
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[family], dtype=torch.float32)
    ids = calibration_blocks(open_checkpoint(str(checkpoints[family])).tokenizer, None, **CALIBRATION)  # quantize's
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    hd = model.config.head_dim
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys, layer.values                                        # (B, kv_heads, T, hd), after RoPE
        ks = state[f"model.layers.{i}.self_attn.k_channel_scale"]
        vs = state[f"model.layers.{i}.self_attn.v_channel_scale"]
        assert ks.dtype == vs.dtype == torch.float32 and ks.shape == vs.shape == (k.shape[1] * hd,)
        torch.testing.assert_close(vs * 127, v.abs().amax((0, 2)).flatten(), rtol=1e-4, atol=1e-6)
        pair = torch.sqrt(k[..., :hd // 2] ** 2 + k[..., hd // 2:] ** 2).amax((0, 2))   # (kv_heads, hd / 2)
        torch.testing.assert_close(ks * 127, torch.cat([pair, pair], -1).flatten(), rtol=1e-4, atol=1e-6)
        assert (k.abs() <= ks.view(1, -1, 1, hd) * 127 * (1 + 1e-5)).all()


def forced(engine, rows: list[list[int]], steps: int) -> torch.Tensor:
    """Prefill the left-padded rows, then `steps` decode steps fed fixed tokens (no greedy divergence): the logits of
    every real position, (positions, V)."""
    ids, mask, positions = left_pad(rows, 2)
    engine.start(len(rows), 256)
    out = [engine.forward(ids, positions, mask, last_only=False)[mask.bool()]]
    pos = positions[:, -1:] + 1
    for step in range(steps):
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], 1)
        out.append(engine.forward(torch.full((len(rows), 1), 100 + step), pos + step, mask)[:, -1])
    return torch.cat(out)


def engine(path, kind: str, kv_scales: str):
    return BACKENDS["cpu"].make_engine(load_model(str(path), "fp32", "fp32"), EngineOptions(
        engine=kind, flash_attention=kind == "torch", kv_dtype="int8", kv_scales=kv_scales))


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_engines_take_the_calibrated_scales(calibrated, family, monkeypatch):
    """--kv_scales calibrated: the native engine equals the reference engine (native Linear math) whose cache
    rounds with the checkpoint's channel scales (PCC >= 0.9999, a prefill and 12 decode steps of fixed tokens), and
    differs from the per-token int8 cache."""
    if native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    path = calibrated[family]
    got = {s: forced(engine(path, "native", s), prompts(), 12) for s in ("calibrated", "per_token")}
    monkeypatch.setattr(QLinearPerGrp, "forward", native_math_forward)
    reference = engine(path, "torch", "calibrated")
    loaded = load_model(str(path), "fp32", "fp32")
    channels = kv_channel_scales(loaded.model, loaded.family)
    assert len(channels) == 2 and reference.kv_precision.channels.keys() == channels.keys()
    want = forced(reference, prompts(), 12)
    assert pcc(got["calibrated"], want) >= 0.9999
    assert not torch.allclose(got["per_token"], got["calibrated"], atol=1e-3)


def test_calibrate_kv_needs_the_native_format_and_calibration(cli, checkpoints, tmp_path):
    for extra in (["--export", "awq"], ["--algorithm", "import"]):
        code, _, err = cli(["quantize", "--model", str(checkpoints["llama3"]), "--out", str(tmp_path / "o"),
                            "--calibrate_kv", "--group_size", "32", *extra])
        assert code == 2 and "--calibrate_kv" in err and "Traceback" not in err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, needle", [
    (["--kv_dtype", "int8", "--kv_scales", "calibrated"], "--calibrate_kv"),     # the checkpoint has no scales
    (["--kv_scales", "calibrated"], "--kv_dtype int8"),                            # scales of an fp32 cache
    (["--engine", "onnx", "--kv_scales", "calibrated"], "--kv_scales")])
def test_kv_scales_where_they_do_not_apply_exit_2(cli, rtn_llama3, args, needle):
    code, _, err = cli(["decode", "--model", str(rtn_llama3), *args, "--prompt", "Hi"])
    assert code == 2 and needle in err and "Traceback" not in err

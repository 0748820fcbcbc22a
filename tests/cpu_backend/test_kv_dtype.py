"""KV cache precision (`--kv_dtype fp32|bf16|fp16|int8`): kernels/kv_quant.py's round trip, the native engine's
stored codes against the reference engine holding the same values, and accuracy bounds against the fp32 cache."""
from __future__ import annotations

import pytest
import torch

from edgeawq.cpu_backend import native_build
from edgeawq.evaluation.parity import pcc
from edgeawq.kernels.kv_quant import KVPrecision, kv_round_trip
from edgeawq.kernels.qlinear import QLinearPerGrp
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.engines import StaticCacheEngine
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model

from ..conftest import (ISAS, TINY, make_config, quantize_tiny, rtn_default_checkpoint, rtn_tiny, use_isa,
                        write_model)
from .test_kv_cache import run
from .test_native_engine import native_math_forward

DTYPES = ["fp32", "bf16", "fp16", "int8"]


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory) -> dict:
    """llama3 and qwen2 (grouped KV heads, head_dim 16), and llama2-hd128: multi-head attention with Llama-2-7B's
    head_dim, whose decode step scores and sums one query per KV head (the kernels' widest register blocking)."""
    root = tmp_path_factory.mktemp("kvdtype")
    out = rtn_tiny(checkpoints, root, ("llama3", "qwen2"))
    out["llama2-hd128"] = root / "llama2-hd128"
    quantize_tiny(write_model(root / "llama2-hd128-src", make_config("llama2", head_dim=128)), out["llama2-hd128"],
                  algorithm="pergrp", awq_mode="none")
    return out


def native(path, **options):
    if native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    return BACKENDS["cpu"].make_engine(load_model(str(path), "fp32", "fp32"), EngineOptions(engine="native", **options))


def prompts(lengths=(150, 97, 20, 3)) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def test_round_trip_formats():
    x = torch.randn(2, 3, 5, 16) * torch.logspace(-3, 2, 16)
    assert torch.equal(kv_round_trip(x, "fp32"), x)
    assert torch.equal(kv_round_trip(x, "bf16"), x.to(torch.bfloat16).float())
    assert torch.equal(kv_round_trip(x, "fp16"), x.to(torch.float16).float())
    q = kv_round_trip(x, "int8")
    s = x.abs().amax(-1, keepdim=True) / 127                                       # per (token, head)
    assert (q - x).abs().le(s / 2 + 1e-6 * x.abs()).all()
    codes = q / s
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 127.001
    zero = torch.zeros(1, 1, 2, 16)
    assert torch.equal(kv_round_trip(zero, "int8"), zero)
    outlier = torch.randn(2, 3, 5, 16)
    outlier[..., 3] *= 100                                                         # one channel of 100x the range
    channel = outlier.abs().amax((0, 2)).flatten() / 127                           # its calibrated ranges
    smoothed, per_token = kv_round_trip(outlier, "int8", channel), kv_round_trip(outlier, "int8")
    y = outlier / channel.view(1, 3, 1, 16)                                        # divided channel-wise, then per token
    s = y.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(smoothed, torch.round(y / s) * s * channel.view(1, 3, 1, 16), rtol=1e-5, atol=1e-6)
    rest = [i for i in range(16) if i != 3]                                        # the other channels' error: smaller
    assert (smoothed - outlier)[..., rest].abs().mean() < 0.2 * (per_token - outlier)[..., rest].abs().mean()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("family", ["llama3", "qwen2", "llama2-hd128"])
@pytest.mark.parametrize("kv_dtype", DTYPES)
def test_native_cache_equals_the_reference_holding_the_same_values(quantized, family, kv_dtype, isa, monkeypatch):
    """The native engine's stored codes (bf16 / fp16 bits, int8 codes with slot scales) against the reference
    engine whose cache holds kv_round_trip's values, with the native Linear math: a prefill of a left-padded batch
    and 12 greedy decode steps, paged and contiguous. Measured 1 - PCC <= 1.5e-5 (0 for fp32); against the
    reference with an fp32 cache instead, >= 0.025 (its greedy tokens part ways), so the bound tells them apart."""
    mask = left_pad(prompts(), 2)[1].bool()

    def logits(out: list) -> torch.Tensor:                                   # (real positions + steps, V)
        return torch.cat([out[0][mask]] + [x[:, -1] for x in out[1:]])

    monkeypatch.setattr(QLinearPerGrp, "forward", native_math_forward)
    want = {d: logits(run(StaticCacheEngine(load_model(str(quantized[family]), "fp32", "fp32"),
                                            kv_precision=KVPrecision(d)), prompts(), 12, 200))
            for d in {kv_dtype, "fp32"}}
    monkeypatch.undo()
    use_isa(monkeypatch, isa)
    for block in (0, 32):
        got = logits(run(native(quantized[family], kv_dtype=kv_dtype, kv_block_size=block), prompts(), 12, 200))
        assert pcc(got, want[kv_dtype]) >= 0.9999, (kv_dtype, block)
        if kv_dtype != "fp32":
            assert pcc(got, want["fp32"]) < 0.9999, (kv_dtype, block)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp16", "int8"])
def test_layer0_stores_the_round_trip_of_the_fp32_values(quantized, kv_dtype, isa, monkeypatch):
    """Layer 0 sees the same keys and values whatever the cache holds: the stored ones (bf16 / fp16 bits, int8
    codes x slot scales) equal kv_round_trip of the fp32 cache's, bit for bit."""
    use_isa(monkeypatch, isa)
    rows = prompts([40, 25])
    engines = {d: native(quantized["llama3"], kv_dtype=d, kv_block_size=0) for d in ("fp32", kv_dtype)}
    stored = {}
    for d, engine in engines.items():
        run(engine, rows, 0, 48)
        k, v = engine.kv.keys[0], engine.kv.values[0]                   # (B, kvh, S/16, hd, 16), (B, kvh, S, hd)
        k = k.permute(0, 1, 2, 4, 3).reshape(v.shape)                  # (B, kvh, S, hd)
        if d == "int8":
            ks, vs = engine.kv.scales
            k, v = k.float() * ks[0][..., None], v.float() * vs[0][..., None]
        stored[d] = (k.float()[:, :, :40], v.float()[:, :, :40])      # the first row's 40 slots are filled
    want = [kv_round_trip(x, kv_dtype) for x in stored["fp32"]]
    for got, expected in zip(stored[kv_dtype], want):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1, :, :25], expected[1, :, :25])


def test_native_int8_with_channel_scales_equals_the_reference(quantized, monkeypatch):
    """Static per-channel int8 scales (what --calibrate_kv stores): the decoder's set_kv_channel_scales against the
    reference's KVPrecision with the same scales; per-token scales give other logits."""
    g = torch.Generator().manual_seed(1)
    hd, kvh, layers = TINY["head_dim"], 2, TINY["num_hidden_layers"]
    channels = {i: (torch.rand(kvh * hd, generator=g) * 0.02 + 0.005, torch.rand(kvh * hd, generator=g) * 0.01 + 0.002)
                for i in range(layers)}
    engine = native(quantized["llama3"], kv_dtype="int8")
    for i, (kc, vc) in channels.items():
        engine.decoder.set_kv_channel_scales(i, kc, vc)
    got = run(engine, prompts(), 8, 200)
    monkeypatch.setattr(QLinearPerGrp, "forward", native_math_forward)
    want = run(StaticCacheEngine(load_model(str(quantized["llama3"]), "fp32", "fp32"),
                                 kv_precision=KVPrecision("int8", channels)), prompts(), 8, 200)
    per_token = run(StaticCacheEngine(load_model(str(quantized["llama3"]), "fp32", "fp32"),
                                      kv_precision=KVPrecision("int8")), prompts(), 8, 200)
    mask = left_pad(prompts(), 2)[1].bool()
    assert pcc(got[0][mask], want[0][mask]) >= 0.99999
    assert not torch.allclose(got[0][mask], per_token[0][mask], atol=1e-3)


def test_cache_storage_and_bytes(quantized):
    for kv_dtype, torch_dtype, elem in [("bf16", torch.bfloat16, 2), ("fp16", torch.float16, 2), ("int8", torch.int8, 1)]:
        engine = native(quantized["llama3"], kv_dtype=kv_dtype, kv_block_size=32)
        run(engine, prompts([40]), 1, 64)
        assert engine.kv.keys[0].dtype == torch_dtype and engine.kv.values[0].dtype == torch_dtype
        per_slot = 2 * TINY["num_hidden_layers"] * 2 * TINY["head_dim"] * elem + (16 * TINY["num_hidden_layers"]
                                                                                  if kv_dtype == "int8" else 0)
        assert engine.kv.block_bytes == 32 * per_slot


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default-llama", "default-qwen2"])
def test_kv_precision_accuracy_bounds_on_a_default_model(model, tmp_path):
    """Teacher-forced against the fp32 cache on 4 windows of 256 tokens (half prefilled, half decoded one token at a
    time): measured top-1 98.2-99.4%, top-5 100%, perplexity within 0.08%, mean logits PCC >= 0.99997 for bf16, fp16
    and int8 (per token) on both models; an fp32 cache agrees on every position (a query's attention sums run in the
    same order in a prefill tile and in a decode step)."""
    from edgeawq.data_sources import corpus_split
    from edgeawq.evaluation.accuracy import teacher_forced_accuracy
    from edgeawq.evaluation.perplexity import eval_windows

    path = rtn_default_checkpoint(model, 4, tmp_path)
    loaded = load_model(str(path))
    windows = eval_windows(loaded.tokenizer, corpus_split("test").read_text(encoding="utf-8"), 256, 4, 2048)
    reference = native(path)
    for kv_dtype, top1, ppl in [("fp32", 1.0, 1e-6), ("bf16", 0.97, 0.002), ("fp16", 0.97, 0.002),
                                ("int8", 0.97, 0.005)]:
        r = teacher_forced_accuracy(reference, native(path, kv_dtype=kv_dtype), windows, 128)
        assert r.top1 >= top1 and r.top5 >= 0.99 and abs(r.target_ppl / r.reference_ppl - 1) <= ppl, \
            (kv_dtype, r.top1, r.target_ppl, r.reference_ppl)
        assert r.mean_pcc >= 0.9999, (kv_dtype, r.mean_pcc)


@pytest.mark.parametrize("args", [["--engine", "onnx", "--kv_dtype", "int8"],
                                  ["--engine", "torch", "--kv_dtype", "bf16"],
                                  ["--target", "tt", "--kv_dtype", "int8"],
                                  ["--kv_dtype", "int4"]])
def test_kv_dtype_where_it_does_not_apply_exits_2(cli, quantized, args):
    code, _, err = cli(["decode", "--model", str(quantized["llama3"]), *args, "--prompt", "Hi"])
    assert code == 2 and "--kv_dtype" in err and "Traceback" not in err


def test_decode_with_an_int8_cache(cli, quantized):
    if native_build.unavailable_reason() is not None:
        pytest.skip("native kernels cannot build here")
    code, out, err = cli(["decode", "--model", str(quantized["llama3"]), "--kv_dtype", "int8", "--max_new_tokens",
                          "8", "--prompt", "The hacker ethic"])
    assert code == 0 and out.strip(), err

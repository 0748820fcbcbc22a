"""Chunked prefill (runtime/chunked_prefill.py): every engine's chunked prefill equals its one-call prefill."""
from __future__ import annotations

import pytest
import torch

from edgeawq.cpu_backend import native_build
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.chunked_prefill import chunk_bounds, forward_chunked
from edgeawq.runtime.generate import generate_ids, left_pad
from edgeawq.runtime.model_loader import load_model
from edgeawq.tt_backend.backend import make_tt_engine

from ..conftest import TINY, rtn_tiny

ENGINES = ["transformers", "flash", "native", "onnx", "tt"]
LENGTHS = [150, 97, 20, 3]          # one left-padded batch: short rows start in later chunks


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory) -> dict:
    # mistral: a sliding window (8) shorter than a chunk
    return rtn_tiny(checkpoints, tmp_path_factory.mktemp("chunked"), ("llama3", "mistral"))


def make(kind: str, path, chunk: int | None = None, **options):
    loaded = load_model(str(path), "fp32", "fp32")
    if kind == "tt":
        engine = make_tt_engine(loaded, "accuracy")
    elif kind == "native" and native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    else:
        engine_name = {"transformers": "torch", "flash": "torch"}.get(kind, kind)
        engine = BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine=engine_name, flash_attention=kind == "flash",
                                                                   **options))
    if chunk is not None:
        engine.prefill_chunk = chunk
    return engine


def batch(lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def test_chunk_bounds():
    assert chunk_bounds(10, 0) == [(0, 10)]
    assert chunk_bounds(10, 16) == [(0, 10)]
    assert chunk_bounds(64, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert chunk_bounds(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert chunk_bounds(65, 32) == [(0, 32), (32, 65)]          # no one-token chunk: it would be a decode step
    assert chunk_bounds(33, 32) == [(0, 33)]


@pytest.mark.parametrize("family", ["llama3", "mistral"])
@pytest.mark.parametrize("kind", ENGINES)
def test_chunked_prefill_equals_one_call(quantized, family, kind, tmp_path, monkeypatch):
    """A left-padded batch (150, 97, 20 and 3 tokens) prefilled in chunks of 16 and of 48, against one call:
    logits at every real position within 1e-3 (fp32), then 8 greedy tokens per row identical."""
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    prompts = batch()
    ids, mask, positions = left_pad(prompts, 2)
    T = ids.shape[1]
    one = make(kind, quantized[family], chunk=0)
    one.start(len(prompts), T + 8)
    want = one.forward(ids, positions, mask, last_only=False)                    # (B, T, V)
    want_tokens = [c.token_ids for c in generate_ids(one, prompts, 8, T + 8, 2, set(), stop_at_eos=False)]
    for chunk in (16, 48):
        engine = make(kind, quantized[family], chunk=chunk)
        engine.start(len(prompts), T + 8)
        got = forward_chunked(engine, ids, positions, mask, last_only=False)
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() <= 1e-3, (kind, chunk)
        tokens = [c.token_ids for c in generate_ids(engine, prompts, 8, T + 8, 2, set(), stop_at_eos=False)]
        assert tokens == want_tokens, (kind, chunk)


def test_chunked_last_only_equals_the_last_position(quantized):
    engine = make("flash", quantized["llama3"])
    ids, mask, positions = left_pad(batch(), 2)
    engine.start(4, ids.shape[1])
    full = forward_chunked(engine, ids, positions, mask, last_only=False, chunk=32)
    engine.start(4, ids.shape[1])
    last = forward_chunked(engine, ids, positions, mask, last_only=True, chunk=32)
    assert last.shape == (4, 1, TINY["vocab_size"]) and torch.equal(last[:, 0], full[:, -1])


def test_engines_have_a_default_chunk_and_the_option_overrides_it(quantized):
    loaded = load_model(str(quantized["llama3"]), "fp32", "fp32")
    assert BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="torch")).prefill_chunk == 1024
    engine = BACKENDS["cpu"].make_engine(load_model(str(quantized["llama3"]), "fp32", "fp32"),
                                         EngineOptions(engine="torch", prefill_chunk=64))
    assert engine.prefill_chunk == 64


@pytest.mark.parametrize("value", ["5", "-1", "x"])
def test_bad_prefill_chunk_exits_2(cli, quantized, value):
    code, _, err = cli(["decode", "--model", str(quantized["llama3"]), "--prefill_chunk", value, "--prompt", "Hi"])
    assert code == 2 and "--prefill_chunk" in err and "Traceback" not in err


def test_decode_with_a_small_chunk_matches_one_call(cli, quantized, tmp_path):
    prompt = "The hacker ethic " * 12
    outs = []
    for chunk in ("0", "16"):
        code, out, err = cli(["decode", "--model", str(quantized["llama3"]), "--prefill_chunk", chunk,
                              "--max_new_tokens", "8", "--ignore_eos", "--prompt", prompt])
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]

"""Decoding: batched greedy equals per-prompt greedy, greedy equals transformers `generate`, sampling is seeded."""
from __future__ import annotations

import pytest
import torch
import transformers

from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.generate import generate_ids, generate_text
from edgeawq.runtime.model_loader import load_model
from edgeawq.runtime.sampling import SamplingConfig

PROMPTS = [[0, 11, 12, 13, 14, 15, 16, 17], [0, 300, 301], [0, 42, 43, 44, 45]]


def decode(engine, prompts, n=12, sampling=SamplingConfig()):
    res = generate_ids(engine, prompts, n, 128, pad_id=2, stop_ids={1}, sampling=sampling, stop_at_eos=False)
    return [r.token_ids for r in res]


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral"])
@pytest.mark.parametrize("flash", [False, True])
def test_batched_greedy_equals_per_prompt_greedy(checkpoints, family, flash):
    engine = make_engine(load_model(checkpoints[family]), flash)
    batched = decode(engine, PROMPTS)
    single = [decode(engine, [p])[0] for p in PROMPTS]
    assert batched == single


@pytest.mark.parametrize("family", ["llama3", "llama2", "qwen2", "mistral"])
@pytest.mark.parametrize("flash", [False, True])
def test_greedy_equals_transformers_generate(checkpoints, family, flash):
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[family], dtype=torch.float32).eval()
    engine = make_engine(load_model(checkpoints[family]), flash)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=2)
        assert decode(engine, [prompt])[0] == out[0, len(prompt):].tolist()


def test_sampling_is_seeded_and_differs_from_greedy(checkpoints):
    engine = make_engine(load_model(checkpoints["llama3"]), True)
    hot = SamplingConfig(temperature=1.5, top_p=0.95, top_k=50, seed=7)
    a, b = decode(engine, PROMPTS, 16, hot), decode(engine, PROMPTS, 16, hot)
    assert a == b
    assert decode(engine, PROMPTS, 16, SamplingConfig(temperature=1.5, top_p=0.95, top_k=50, seed=8)) != a
    assert a != decode(engine, PROMPTS, 16)


def test_top_k_one_is_greedy(checkpoints):
    engine = make_engine(load_model(checkpoints["qwen2"]), True)
    assert decode(engine, PROMPTS, 10, SamplingConfig(temperature=1.0, top_k=1, seed=3)) == decode(engine, PROMPTS, 10)


def test_stop_at_eos_ends_a_row_early(checkpoints):
    engine = make_engine(load_model(checkpoints["llama3"]), True)
    free = decode(engine, PROMPTS[:1], 12)[0]
    stop = {free[3]}  # declare the 4th generated token an end-of-sequence token
    res = generate_ids(engine, PROMPTS[:1], 12, 128, pad_id=2, stop_ids=stop, stop_at_eos=True)
    assert res[0].token_ids == free[:free.index(free[3])] and res[0].stopped_at_eos


def test_streamed_text_equals_final_text(checkpoints):
    loaded = load_model(checkpoints["llama3"])
    pieces: list[str] = []
    res = generate_text(make_engine(loaded, True), loaded.tokenizer, loaded.config, ["The hacker"], 10, 128,
                        stop_at_eos=False, stream=pieces.append)
    assert "".join(pieces) == res[0].text and len(res[0].token_ids) == 10
    assert res[0].prefill_ms > 0 and len(res[0].token_ms) == 9

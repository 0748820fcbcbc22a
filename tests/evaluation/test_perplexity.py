"""Perplexity: equals a direct transformers computation on the same windows; the protocol is reported."""
from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from edgeawq.errors import UserError
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity
from edgeawq.tasks.perplexity import perplexity_task


@pytest.mark.parametrize("flash", [False, True])
def test_float_perplexity_equals_direct_transformers(checkpoints, flash):
    loaded = load_model(checkpoints["qwen2"])
    text, _ = load_eval_text("corpus-test")
    windows = eval_windows(loaded.tokenizer, text[:20000], 128, 6, loaded.max_context)
    ppl, _ = perplexity(make_engine(loaded, flash), windows)
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["qwen2"], dtype=torch.float32).eval()
    nll = 0.0
    with torch.no_grad():
        for w in windows:
            logits = hf(input_ids=w[None]).logits[0]
            nll += torch.nn.functional.cross_entropy(logits[:-1], w[1:], reduction="sum").item()
    direct = math.exp(nll / (windows.numel() - windows.shape[0]))
    assert abs(ppl - direct) / direct <= 1e-4


def test_perplexity_task_json_has_the_protocol(checkpoints, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text((load_eval_text("corpus-valid")[0])[:30000])
    r = perplexity_task(str(checkpoints["llama3"]), "cpu", "fp32", "bf16", False, str(text), 64, 5, False, None,
                        "json")
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] == pytest.approx(r["perplexity"]) and out["perplexity"] > 1
    p = out["protocol"]
    assert (p["seqlen"], p["windows"], p["tokens_scored"], p["join"]) == (64, 5, 5 * 63, repr("\n\n"))
    assert p["dataset"] == str(text) and p["bos"].startswith("none") and p["target"] == "cpu"


def test_compare_uses_the_recorded_float_source(checkpoints, tmp_path, capsys):
    from edgeawq.tasks.quantize import quantize_task

    quantize_task(str(checkpoints["llama3"]), str(tmp_path / "q"), 4, 32, True, "pergrp", "none", None, None, False,
                  32, None, 4, 64, 0, False, progress=False)
    r = perplexity_task(str(tmp_path / "q"), "cpu", "fp32", "fp32", True, "corpus-test", 128, 3, True, None, "text")
    assert r["compare"]["model"] == str(checkpoints["llama3"])
    assert r["compare"]["ratio"] == pytest.approx(r["perplexity"] / r["compare"]["perplexity"])
    printed = capsys.readouterr().out
    assert "protocol: dataset shipped corpus test split" in printed and "3 windows x 128 tokens" in printed


def test_dataset_errors(checkpoints):
    with pytest.raises(UserError, match="not a known dataset or an existing file"):
        load_eval_text("/no/such/file.txt")
    with pytest.raises(UserError, match="wikitext2 is not in the local Hugging Face datasets cache"):
        load_eval_text("wikitext2")
    loaded = load_model(checkpoints["llama3"])
    with pytest.raises(UserError, match="longer than the model's context of 256"):
        eval_windows(loaded.tokenizer, "x", 2048, None, loaded.max_context)
    with pytest.raises(UserError, match="fewer than one window"):
        eval_windows(loaded.tokenizer, "a few words", 128, None, loaded.max_context)


def test_second_text_is_shipped_and_disjoint_from_the_training_corpus():
    from edgeawq.data_sources import corpus_split

    text, description = load_eval_text("python-docs")
    assert "Python 3.11 tutorial and FAQ" in description and len(text.split()) > 40000
    train = corpus_split("train").read_text(encoding="utf-8")
    long_paragraphs = [p for p in text.splitlines() if len(p) > 200]
    assert len(long_paragraphs) > 300 and not any(p in train for p in long_paragraphs)

"""The embedded default models: shapes, sizes, real quality, and the README's statements about them."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from edgeawq.default_models import DEFAULT_MODELS, HERE
from edgeawq.runtime.model_loader import load_model

ROOT = Path(__file__).resolve().parents[2]
ALIASES = sorted(DEFAULT_MODELS)


def report(alias: str) -> dict:
    return json.loads((DEFAULT_MODELS[alias] / "training_report.json").read_text())


def test_all_shipped_model_files_fit_in_25_mb():
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= 25 * 10**6, total


@pytest.mark.parametrize("alias", ALIASES)
def test_shapes_allow_every_group_size(alias):
    config = json.loads((DEFAULT_MODELS[alias] / "config.json").read_text())
    assert config["hidden_size"] % 256 == 0 and config["intermediate_size"] % 256 == 0
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA


def test_families_and_their_features():
    llama = json.loads((DEFAULT_MODELS["default-llama"] / "config.json").read_text())
    assert llama["model_type"] == "llama" and llama["tie_word_embeddings"]
    assert llama["rope_parameters"]["rope_type"] == "llama3"
    qwen = json.loads((DEFAULT_MODELS["default-qwen2"] / "config.json").read_text())
    assert qwen["model_type"] == "qwen2" and not qwen["tie_word_embeddings"]
    with safe_open(str(DEFAULT_MODELS["default-qwen2"] / "model.safetensors"), "pt") as f:
        assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
                "model.layers.0.self_attn.v_proj.bias"} <= set(f.keys())


@pytest.mark.parametrize("alias", ALIASES)
def test_model_is_far_better_than_unigram(alias):
    r = report(alias)
    assert r["test_perplexity"] * 4 < r["test_unigram_perplexity"], r


@pytest.mark.parametrize("alias", ALIASES)
def test_reported_perplexity_is_reproduced(alias):
    """Recompute the test-split perplexity of the shipped weights with the report's protocol."""
    loaded = load_model(alias)
    text = (ROOT / "data" / "corpus" / "test.txt").read_text(encoding="utf-8")
    stream = torch.tensor(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, stream.numel() - 512 + 1, 512):
            ids = stream[start:start + 512][None]
            logits = loaded.model(input_ids=ids).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += 511
    assert math.exp(nll / count) == pytest.approx(report(alias)["test_perplexity"], rel=2e-3)


@pytest.mark.parametrize("alias", ALIASES)
def test_readme_states_the_reported_perplexities(alias):
    readme = (ROOT / "README.md").read_text()
    r = report(alias)
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{alias}`"))
    numbers = [float(x) for x in re.findall(r"\d+\.\d+", row)]
    assert round(r["test_perplexity"], 1) in numbers and round(r["test_unigram_perplexity"], 1) in numbers


def test_decode_without_model_uses_the_default(tmp_path):
    out = tmp_path / "o.json"
    proc = subprocess.run([sys.executable, "-m", "edgeawq.cli", "--task", "decode", "--prompt", "The hacker",
                           "--max_new_tokens", "12", "--ignore_eos", "--output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["model"] == str(DEFAULT_MODELS["default-llama"]) and data["results"][0]["new_tokens"] == 12
    assert proc.stdout.startswith("The hacker") and len(proc.stdout.strip()) > len("The hacker") + 10


@pytest.mark.slow
def test_training_script_is_deterministic(tmp_path):
    """Two short runs of the training script with the same seed write byte-identical weights."""
    script = ROOT / "scripts" / "train_default_models.py"
    for run in ("a", "b"):
        subprocess.run([sys.executable, str(script), "--steps", "3", "--only", "qwen2", "--out", str(tmp_path / run)],
                       check=True, capture_output=True, text=True)
    a = (tmp_path / "a" / "qwen2" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "qwen2" / "model.safetensors").read_bytes()
    r = json.loads((tmp_path / "a" / "qwen2" / "training_report.json").read_text())
    assert r["steps"] == 3 and r["test_unigram_perplexity"] == report("default-qwen2")["test_unigram_perplexity"]

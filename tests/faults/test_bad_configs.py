"""Bad config.json files: every entry point (decode, quantize) refuses each with exit 2 and a paragraph naming the
problem, never a traceback; quantize writes nothing."""
from __future__ import annotations

import json
import os
import shutil

import pytest


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _drop(key):
    return lambda c: c.pop(key)


CASES = {
    "no hidden_size": (_drop("hidden_size"), "lacks 'hidden_size'"),
    "no intermediate_size": (_drop("intermediate_size"), "lacks 'intermediate_size'"),
    "no heads": (_drop("num_attention_heads"), "lacks 'num_attention_heads'"),
    "no layers": (_drop("num_hidden_layers"), "lacks 'num_hidden_layers'"),
    "no vocab": (_drop("vocab_size"), "lacks 'vocab_size'"),
    "hidden_size abc": (_set("hidden_size", "abc"), "hidden_size is 'abc'"),
    "hidden_size bool": (_set("hidden_size", True), "hidden_size is True"),
    "negative layers": (_set("num_hidden_layers", -2), "num_hidden_layers is -2"),
    "float heads": (_set("num_attention_heads", 4.0), "num_attention_heads is 4.0"),
    "heads not dividing hidden": (lambda c: (c.pop("head_dim"), c.__setitem__("num_attention_heads", 5)),
                                  "does not divide hidden_size"),
    "kv heads not dividing heads": (_set("num_key_value_heads", 3), "num_key_value_heads 3 does not divide"),
    "unknown hidden_act": (_set("hidden_act", "swishy"), "hidden_act 'swishy'"),
    "hidden_act list": (_set("hidden_act", ["silu"]), "hidden_act ['silu']"),
    "unknown rope_type": (_set("rope_parameters", {"rope_type": "foo", "rope_theta": 10000.0}), "RoPE type 'foo'"),
    "legacy rope_scaling type": (lambda c: (c.pop("rope_parameters", None), c.__setitem__(
        "rope_scaling", {"type": "ntk-by-parts", "factor": 2.0})), "RoPE type 'ntk-by-parts'"),
    "rope_scaling a string": (_set("rope_scaling", "linear"), "rope_scaling is 'linear'"),
    "llama3 rope without its factors": (_set("rope_parameters", {"rope_type": "llama3", "rope_theta": 10000.0}),
                                        "Missing required keys in `rope_parameters`"),
    "quantization_config a string": (_set("quantization_config", "awq"), "quantization_config is 'awq'"),
    "quantization_config unknown method": (_set("quantization_config", {"quant_method": "gguf"}),
                                           "quantization method 'gguf'"),
    "rms_norm_eps negative": (_set("rms_norm_eps", -1e-5), "rms_norm_eps is -1e-05"),
    "rope_theta NaN": (_set("rope_theta", float("nan")), "rope_theta is nan"),
    "tie_word_embeddings string": (_set("tie_word_embeddings", "yes"), "tie_word_embeddings is 'yes'"),
    "max_position_embeddings zero": (_set("max_position_embeddings", 0), "max_position_embeddings is 0"),
    "vocab disagrees with the embedding": (_set("vocab_size", 5000), "model.embed_tokens.weight"),
    "intermediate disagrees with the weights": (_set("intermediate_size", 256), "mlp"),
    "unknown model_type": (_set("model_type", "gpt2"), "'gpt2'"),
    "a JSON list": (lambda c: None, "does not hold a JSON object"),
}


@pytest.fixture
def broken_model(checkpoints, tmp_path):
    def make(name: str):
        folder = tmp_path / "model"
        shutil.copytree(checkpoints["llama3"], folder)
        config = json.loads((folder / "config.json").read_text())
        mutate, needle = CASES[name]
        mutate(config)
        text = "[1, 2]" if name == "a JSON list" else json.dumps(config)
        (folder / "config.json").write_text(text)
        return folder, needle
    return make


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_refuses(broken_model, user_error, name):
    folder, needle = broken_model(name)
    user_error(["--task", "decode", "--model", str(folder), "--prompt", "x", "--max_new_tokens", "2"], needle)


@pytest.mark.parametrize("name", sorted(CASES))
def test_quantize_refuses_and_writes_nothing(broken_model, user_error, tmp_path, name):
    folder, needle = broken_model(name)
    user_error(["--task", "quantize", "--model", str(folder), "--out", str(tmp_path / "q"), "--algorithm", "pergrp",
                "--group_size", "32"], needle)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_unreadable_config(checkpoints, tmp_path, user_error, monkeypatch):
    """A config.json the user may not read (injected: root, as in CI, reads files whatever their permissions)."""
    from pathlib import Path

    folder = tmp_path / "model"
    shutil.copytree(checkpoints["llama3"], folder)
    real = Path.read_bytes

    def denied(self):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    user_error(["--task", "decode", "--model", str(folder), "--prompt", "x"], "cannot be read", "Permission denied")

"""Loading builds on the meta device and assigns memory-mapped weights: peak RSS is about one weight copy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.model_loader import load_model

from ..conftest import make_config

MEASURE = r"""
import json, resource, sys, torch
from edgeawq.runtime.model_loader import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loaded = load_model(sys.argv[1], dtype=sys.argv[2])
total = sum(float(p.float().sum()) for p in loaded.model.parameters())  # touch every weight page
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "after": after}))
"""


def write_big_checkpoint(path, hidden=1024, inter=2816, layers=8, vocab=32000):
    """A Llama-shaped bf16 checkpoint of ~330 MB written tensor by tensor (no model is instantiated)."""
    config = make_config("llama2", hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, head_dim=128, vocab_size=vocab,
                         dtype="bfloat16")
    path.mkdir()
    config.save_pretrained(path)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (path / f).write_bytes((DEFAULT_MODELS["default-llama"] / f).read_bytes())
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.slow
def test_peak_rss_is_about_one_copy_of_the_weights(tmp_path):
    weight_bytes = write_big_checkpoint(tmp_path / "big")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "big"), "bf16"],
                          capture_output=True, text=True, check=True)
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = rss["after"] - rss["before"]
    assert growth <= 1.25 * weight_bytes, (growth / 2**20, weight_bytes / 2**20)


def test_loaded_model_has_no_meta_tensors_and_real_rope(checkpoints):
    loaded = load_model(checkpoints["llama3"])
    assert not any(t.is_meta for t in loaded.model.state_dict().values())
    rotary = loaded.model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32 and torch.isfinite(rotary.inv_freq).all()
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # tied embeddings


def test_default_model_alias_resolves():
    assert load_model("default").source == DEFAULT_MODELS["default-llama"]

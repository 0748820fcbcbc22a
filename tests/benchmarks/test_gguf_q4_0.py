"""benchmarks/peers/gguf_q4_0.py: the random Q4_0 GGUF of a shape carries its layout and RoPE scaling keys."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peers.gguf_q4_0 import write_random_q4_0_gguf  # noqa: E402

gguf = pytest.importorskip("gguf")

SHAPE = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=256, hidden_size=64,
             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0)


def fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    out = {}
    for name, field in reader.fields.items():
        if name.startswith(("llama.", "general.architecture")):
            value = field.parts[field.data[0]]
            out[name] = bytes(value).decode() if value.dtype == np.uint8 else value.tolist()[0]
    return out


@pytest.mark.parametrize("scaling, expected", [
    (None, {}),
    ({"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 1024},
     {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 16.0,
      "llama.rope.scaling.original_context_length": 1024}),
    ({"type": "linear", "factor": 4.0}, {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}),
])
def test_layout_and_rope_scaling_keys(tmp_path, scaling, expected):
    config = dict(SHAPE, **({"rope_scaling": scaling} if scaling else {}))
    got = fields(write_random_q4_0_gguf(config, tmp_path / "m.gguf"))
    assert got["general.architecture"] == "llama" and got["llama.context_length"] == 1024
    assert got["llama.block_count"] == 2 and got["llama.attention.head_count_kv"] == 2
    assert {k: v for k, v in got.items() if k.startswith("llama.rope.scaling")} == expected
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.1.attn_q.weight"] == types["output.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32

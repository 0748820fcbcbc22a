"""Checkpoints for the mesh tests, and this folder on sys.path so that mesh ranks can import probe.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transformers

sys.path.insert(0, str(Path(__file__).parent))       # before the first mesh run starts its fork server

from ..conftest import quantize_tiny, write_model  # noqa: E402

from edgeawq.default_models import DEFAULT_MODELS  # noqa: E402

# Qwen2.5-7B's head layout (28 query heads, 4 KV heads) with small widths; MLP 1184 = 37 groups of 32 (uneven on
# 8 and 32 ranks, as 18944 = 148 groups of 128 is on 32)
QWEN7B_HEADS = dict(vocab_size=4096, hidden_size=256, intermediate_size=1184, num_hidden_layers=2,
                    num_attention_heads=28, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
                    bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


@pytest.fixture(scope="session")
def mesh_models(tmp_path_factory) -> dict[str, str]:
    """name -> checkpoint: the default models (float), RTN w4 g64 of both (qwen2 with a quantized lm_head), the
    default llama as SmoothQuant W8A8 per tensor, the Qwen2.5-7B-head-layout model (float, and RTN w4 g32)."""
    root = tmp_path_factory.mktemp("mesh")
    out = {"llama": "default-llama", "qwen2": "default-qwen2"}
    quantize_tiny(DEFAULT_MODELS["default-llama"], root / "llama-w4g64", group_size=64, algorithm="pergrp",
                  awq_mode="none")
    quantize_tiny(DEFAULT_MODELS["default-qwen2"], root / "qwen2-w4g64", group_size=64, algorithm="pergrp",
                  awq_mode="none", lm_head=True)
    quantize_tiny(DEFAULT_MODELS["default-llama"], root / "llama-w8a8", w_bit=None, group_size=None,
                  algorithm="smoothquant", awq_mode="run", act_quant="per_tensor")
    write_model(root / "qwen7b-heads", transformers.Qwen2Config(**QWEN7B_HEADS))
    quantize_tiny(root / "qwen7b-heads", root / "qwen7b-heads-w4g32", group_size=32, algorithm="pergrp",
                  awq_mode="none")
    out.update({name: str(root / name) for name in ("llama-w4g64", "qwen2-w4g64", "llama-w8a8", "qwen7b-heads",
                                                    "qwen7b-heads-w4g32")})
    return out

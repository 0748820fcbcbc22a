"""Strict checks of a model's config.json before anything is built from it (decode, quantize and every other
entry point read configs through `check_config`).

Checked: the sizes every Llama-family config states (hidden_size, intermediate_size, num_attention_heads,
num_hidden_layers, vocab_size: positive integers, no defaults assumed), the optional sizes when present
(num_key_value_heads, head_dim, max_position_embeddings, sliding_window), that the heads divide the hidden size
(unless head_dim says otherwise) and the KV heads divide the heads, sizes within SIZE_LIMITS, hidden_act (an activation transformers knows),
rms_norm_eps and rope_theta (positive numbers), tie_word_embeddings (a boolean), the RoPE settings
(`rope_scaling` or `rope_parameters`: an object whose rope_type or legacy type is one transformers implements),
and quantization_config (an object). Each problem is a UserError naming the file, the key and the fix.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

REQUIRED_SIZES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
POSITIVE_NUMBERS = ("rms_norm_eps", "rope_theta")
# Far above every released Llama-family model (Llama 3.1 405B: 126 layers, hidden 16384, MLP 53248; vocabularies up
# to ~256k; contexts up to 10M): a larger value is a damaged file, refused before it costs hours or all memory.
SIZE_LIMITS = {"num_hidden_layers": 1024, "hidden_size": 2**18, "intermediate_size": 2**20, "vocab_size": 2**22,
               "num_attention_heads": 2**12, "num_key_value_heads": 2**12, "head_dim": 2**12,
               "max_position_embeddings": 2**26, "sliding_window": 2**26}
ROPE_KEYS = ("rope_scaling", "rope_parameters")


def _is_int(v) -> bool:
    return type(v) is int


def _is_number(v) -> bool:
    return type(v) in (int, float) and v == v and abs(v) != float("inf")


def rope_types() -> tuple[str, ...]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ("default", *ROPE_INIT_FUNCTIONS)


def check_config(raw: dict, path: Path) -> None:
    """Raise a UserError for the first problem of the raw config.json dict `raw` (read from `path`)."""
    fix = "Use the config.json that was released with the model's weights."

    def bad(problem: str, how: str = fix) -> UserError:
        return UserError(f"{path}: {problem}.", how)

    for key in REQUIRED_SIZES:
        if key not in raw:
            raise bad(f"it lacks {key!r}, which every Llama-family config states")
        if not _is_int(raw[key]) or raw[key] <= 0:
            raise bad(f"{key} is {raw[key]!r}; it must be a positive integer")
    for key in OPTIONAL_SIZES:
        v = raw.get(key)
        if v is not None and (not _is_int(v) or v <= 0):
            raise bad(f"{key} is {v!r}; it must be a positive integer (or absent)")
    for key, limit in SIZE_LIMITS.items():
        if (raw.get(key) or 0) > limit:
            raise bad(f"{key} is {raw[key]}, more than any model this tool supports (at most {limit})")
    heads, hidden = raw["num_attention_heads"], raw["hidden_size"]
    if raw.get("head_dim") is None and hidden % heads:
        raise bad(f"num_attention_heads {heads} does not divide hidden_size {hidden} and no head_dim is given")
    kv = raw.get("num_key_value_heads") or heads
    if heads % kv:
        raise bad(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    act = raw.get("hidden_act", "silu")
    from transformers.activations import ACT2FN

    if not isinstance(act, str) or act not in ACT2FN:
        raise bad(f"hidden_act {act!r} is not an activation transformers implements",
                  f"Use one of: {', '.join(sorted(ACT2FN))} (Llama-family models use silu).")
    for key in POSITIVE_NUMBERS:
        v = raw.get(key)
        if v is not None and (not _is_number(v) or v <= 0):
            raise bad(f"{key} is {v!r}; it must be a positive number")
    if "tie_word_embeddings" in raw and not isinstance(raw["tie_word_embeddings"], bool):
        raise bad(f"tie_word_embeddings is {raw['tie_word_embeddings']!r}; it must be true or false")
    for key in ROPE_KEYS:
        rope = raw.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise bad(f"{key} is {rope!r}; it must be an object such as {{\"rope_type\": \"llama3\", ...}}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in rope_types():
            raise bad(f"{key} asks for RoPE type {kind!r}, which transformers does not implement",
                      f"Use one of: {', '.join(rope_types())}.")
        for name, v in rope.items():
            if name not in ("rope_type", "type") and not (v is None or isinstance(v, (bool, list)) or _is_number(v)
                                                          or isinstance(v, str)):
                raise bad(f"{key}.{name} is {v!r}; RoPE settings are numbers")
    quant = raw.get("quantization_config")
    if quant is not None and not isinstance(quant, dict):
        raise bad(f"quantization_config is {quant!r}; it must be an object with a quant_method",
                  "Use the config.json written with the checkpoint (run_awq writes an object).")

"""How far a model's RoPE settings let it run, and the RoPE tables every engine reads (rows = positions).

Context limit (`context_limit`): `max_position_embeddings` (the trained length) for RoPE types that do not scale
(`default`); for the scaling types transformers implements, the length the scaling implies:
max(max_position_embeddings, original x factor), where original is the settings' `original_max_position_embeddings`
if given, else `max_position_embeddings`:

    linear    positions divided by factor                  e.g. 4k trained, factor 4 -> 16k
    dynamic   NTK base grown with the sequence length      e.g. 4k, factor 2 -> 8k
    yarn      NTK-by-parts + attention scaling             e.g. Qwen2.5: 32k, factor 4 -> 128k
    llama3    Llama 3.1 frequency bands                    e.g. 8k original, factor 8, 128k stated -> 128k
    longrope  short/long factors                           e.g. Phi-3: 4k original, 128k stated -> 128k

Tables (`rope_tables`): cos, sin float32 (positions, head_dim), row p = what the model's own rotary module
(transformers) gives position p, attention scaling included. For every type but `dynamic` that is one call of the
module on positions 0..n-1. `dynamic` rescales its base as the sequence grows (transformers recomputes the
frequencies for seq_len = the largest position + 1 of each call): row p < max_position_embeddings uses the base
frequencies, row p >= it the frequencies for seq_len = p + 1, which is what the module gives position p when the
sequence reaches p + 1 tokens one token at a time (decode with a KV cache: every cached key keeps the rotation it
was stored with). A single transformers forward over a prompt longer than max_position_embeddings instead rotates
the whole prompt with the frequencies of its full length; the engines here (and the tables) do not.
"""
from __future__ import annotations

import torch
from torch import nn

EXTENDING = ("linear", "dynamic", "yarn", "llama3", "longrope")


def rope_settings(config) -> dict:
    """The config's RoPE settings (transformers' standardized `rope_parameters`, or legacy `rope_scaling`)."""
    for key in ("rope_parameters", "rope_scaling"):
        value = getattr(config, key, None)
        if isinstance(value, dict):
            return value
    return {}


def rope_kind(config) -> str:
    settings = rope_settings(config)
    return str(settings.get("rope_type", settings.get("type", "default")))


def trained_context(config) -> int:
    return int(getattr(config, "max_position_embeddings", 2048))


def context_limit(config) -> int:
    """The longest context the RoPE settings allow (module docstring)."""
    trained = trained_context(config)
    settings = rope_settings(config)
    if rope_kind(config) not in EXTENDING:
        return trained
    original = int(settings.get("original_max_position_embeddings") or trained)
    return max(trained, int(original * float(settings.get("factor") or 1.0)))


def context_note(config) -> str:
    """Where the context limit comes from, for messages."""
    kind, trained, limit = rope_kind(config), trained_context(config), context_limit(config)
    if limit > trained:
        return f"max_position_embeddings {trained} extended by its {kind} RoPE scaling"
    if kind in EXTENDING:
        return f"max_position_embeddings; its {kind} RoPE scaling implies no more"
    return (f"max_position_embeddings; RoPE type {kind!r} does not scale past it (a config with rope_type "
            f"linear, dynamic, yarn, llama3 or longrope does)")


def rope_tables(rotary: nn.Module, config, positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 (positions, head_dim) from the model's rotary module `rotary` (module docstring);
    `positions` defaults to `context_limit(config)`."""
    n = context_limit(config) if positions is None else positions
    probe = torch.zeros(1, 1, dtype=torch.float32)
    trained = trained_context(config)
    if rope_kind(config) != "dynamic":
        with torch.no_grad():
            cos, sin = rotary(probe, torch.arange(n)[None])                                 # (1, n, hd) each
        return cos[0].float().contiguous(), sin[0].float().contiguous()
    # dynamic: the module's own frequency function, one block of base rows, then row by row (the module's state is
    # not touched: an earlier run may have grown it)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled = ROPE_INIT_FUNCTIONS["dynamic"]
    cos_rows, sin_rows = [], []
    for start, stop in [(0, min(n, trained)), *((p, p + 1) for p in range(trained, n))]:
        grown = torch.tensor(stop) if stop > trained else None      # as the module calls it: at init, when grown
        inv_freq, scaling = scaled(config, None, seq_len=grown)                             # (hd / 2,)
        freqs = torch.arange(start, stop).float()[:, None] * inv_freq.float()[None, :]      # (rows, hd / 2)
        emb = torch.cat((freqs, freqs), dim=-1)                                             # (rows, hd)
        cos_rows.append((emb.cos() * scaling).float())
        sin_rows.append((emb.sin() * scaling).float())
    return torch.cat(cos_rows).contiguous(), torch.cat(sin_rows).contiguous()

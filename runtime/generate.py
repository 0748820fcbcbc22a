"""Batched autoregressive decoding with left padding, greedy or sampled, with per-token timing.

Left padding: the B prompts are right-aligned in a (B, P) id matrix; padding slots get attention_mask 0 and
position 0, real tokens positions 0..len-1, so every row computes what it would compute alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError
from .chunked_prefill import forward_chunked
from .sampling import Sampler, SamplingConfig

MAX_BATCH = 32
DEFAULT_CONTEXT = 2048     # context allocated when --max_seq_len is not given (at most the model's)


@dataclass
class Completion:
    prompt: str
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prefill_ms: float = 0.0
    token_ms: list[float] = field(default_factory=list)   # wall time of each decode step after the first token
    stopped_at_eos: bool = False

    def as_json(self) -> dict:
        return {
            "prompt": self.prompt, "completion": self.text, "prompt_tokens": len(self.prompt_ids),
            "new_tokens": len(self.token_ids), "prefill_ms": round(self.prefill_ms, 3),
            "mean_token_ms": round(sum(self.token_ms) / len(self.token_ms), 3) if self.token_ms else None,
            "token_ms": [round(t, 3) for t in self.token_ms], "stopped_at_eos": self.stopped_at_eos,
        }


def eos_ids(tokenizer, config) -> set[int]:
    ids = set()
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def encode_prompts(tokenizer, prompts: list[str], instruct: bool) -> list[list[int]]:
    """Token ids per prompt: the tokenizer's own special tokens, or its chat template with `instruct`."""
    if instruct and not getattr(tokenizer, "chat_template", None):
        raise UserError("--instruct was given but this model's tokenizer has no chat template.",
                        "Drop --instruct for a base model, or use an instruction-tuned checkpoint.")
    out = []
    for p in prompts:
        if instruct:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(p)["input_ids"])
    return out


def check_batch(prompt_ids: list[list[int]], max_new_tokens: int, max_seq_len: int) -> None:
    if not prompt_ids:
        raise UserError("No prompt was given.", "Pass --prompt TEXT (repeatable) or --prompts FILE.")
    if len(prompt_ids) > MAX_BATCH:
        raise UserError(f"{len(prompt_ids)} prompts were given; the batch limit is {MAX_BATCH}.",
                        f"Split the prompts file into runs of at most {MAX_BATCH} prompts.")
    if max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {max_new_tokens} is invalid.", "Use a positive number of tokens.")
    longest = max(len(p) for p in prompt_ids)
    if longest == 0:
        raise UserError("A prompt encodes to zero tokens.", "Give a non-empty prompt.")
    if longest + max_new_tokens > max_seq_len:
        raise UserError(f"The longest prompt is {longest} tokens; with --max_new_tokens {max_new_tokens} that needs "
                        f"{longest + max_new_tokens} positions, more than the context of {max_seq_len} tokens.",
                        "Shorten the prompt, lower --max_new_tokens, or raise --max_seq_len (up to the model's "
                        "context: max_position_embeddings, or what its RoPE scaling implies).")


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids (B, P), attention_mask (B, P) and position_ids (B, P) for right-aligned prompts."""
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        ids[row, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, P - len(p):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def generate_ids(engine, prompt_ids: list[list[int]], max_new_tokens: int, max_seq_len: int, pad_id: int,
                 stop_ids: set[int], sampling: SamplingConfig = SamplingConfig(), stop_at_eos: bool = True,
                 on_token: Callable[[int, int], None] | None = None) -> list[Completion]:
    """Decode up to `max_new_tokens` for each prompt; `on_token(row, token_id)` is called as tokens arrive. A row
    that ends (end of sequence) while others go on is released from an engine that has `release_row` (a paged KV
    cache frees its blocks) and fed only padding from then on."""
    release = getattr(engine, "release_row", None)
    check_batch(prompt_ids, max_new_tokens, max_seq_len)
    sampler = Sampler(sampling)
    results = [Completion(prompt="", prompt_ids=list(p)) for p in prompt_ids]
    ids, mask, positions = left_pad(prompt_ids, pad_id)
    B = ids.shape[0]
    engine.start(B, max_seq_len)
    done = torch.zeros(B, dtype=torch.bool)
    t0 = time.perf_counter()
    logits = forward_chunked(engine, ids, positions, mask)              # (B, 1, V)
    next_ids = sampler(logits[:, -1])
    prefill_ms = (time.perf_counter() - t0) * 1e3
    for r in results:
        r.prefill_ms = prefill_ms
    next_pos = positions[:, -1:] + 1                                    # (B, 1)
    for step in range(max_new_tokens):
        for row in range(B):
            if done[row]:
                continue
            tok = int(next_ids[row])
            if stop_at_eos and tok in stop_ids:
                done[row] = True
                results[row].stopped_at_eos = True
                if release is not None:
                    release(row)
                continue
            results[row].token_ids.append(tok)
            if on_token is not None:
                on_token(row, tok)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        live = torch.ones(B, 1, dtype=torch.long) if release is None else (~done).long()[:, None]
        mask = torch.cat([mask, live], dim=1)
        t1 = time.perf_counter()
        logits = engine.forward(next_ids[:, None], next_pos, mask)
        next_ids = sampler(logits[:, -1])
        step_ms = (time.perf_counter() - t1) * 1e3
        for row in range(B):
            if not done[row]:
                results[row].token_ms.append(step_ms)
        next_pos = next_pos + 1
    return results


def generate_text(engine, tokenizer, config, prompts: list[str], max_new_tokens: int, max_seq_len: int,
                  sampling: SamplingConfig = SamplingConfig(), stop_at_eos: bool = True, instruct: bool = False,
                  stream: Callable[[str], None] | None = None) -> list[Completion]:
    """Decode text prompts; with `stream` (single prompt only) new text is passed on as it is produced."""
    prompt_ids = encode_prompts(tokenizer, prompts, instruct)
    streamed = {"ids": [], "text": ""}

    def on_token(row: int, tok: int) -> None:
        streamed["ids"].append(tok)
        text = tokenizer.decode(streamed["ids"], skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            stream(text[len(streamed["text"]):])
            streamed["text"] = text

    results = generate_ids(engine, prompt_ids, max_new_tokens, max_seq_len, tokenizer.pad_token_id,
                           eos_ids(tokenizer, config), sampling, stop_at_eos,
                           on_token if stream is not None and len(prompts) == 1 else None)
    for r, p in zip(results, prompts):
        r.prompt = p
        r.text = tokenizer.decode(r.token_ids, skip_special_tokens=True)
    if stream is not None and len(prompts) == 1 and results[0].text != streamed["text"]:
        stream(results[0].text[len(streamed["text"]):])
    return results


def resolve_max_seq_len(requested: int | None, config) -> int:
    """--max_seq_len, or its default: at most the model's context (runtime/rope_extension.context_limit)."""
    from .rope_extension import context_limit, context_note

    model_context = context_limit(config)
    if requested is None:
        return min(model_context, DEFAULT_CONTEXT)
    if requested > model_context:
        raise UserError(f"--max_seq_len {requested} exceeds the model's context of {model_context} tokens "
                        f"({context_note(config)}).", f"Use --max_seq_len {model_context} or less.")
    return requested

"""Latency and throughput measurement of one engine (the protocol below; the README reports it).

For a batch of B prompts of L tokens each (B = `--batch`, default 1, or the data-parallel groups of a mesh; row b
is the b-th run of L tokens of the text) and N new tokens (greedy): the first forward is the prefill and gives the
first token of every row (time to first token); the remaining N - 1 forwards are decode steps, so time/token =
decode time / (N - 1) (one step yields B tokens), tokens/s = B / time per step and prefill tok/s = B x L /
prefill time. One warm-up generation runs before the timed ones; each length is timed `repeats` times and the
median is reported with the min and max. Achieved bandwidth = bytes of weights read per decode step x steps/s
(every weight tensor once, but only one row of the embedding table). Peak RSS is measured per prompt
length, from the start of its timed runs (VmHWM window on Linux), with the two parts the engine knows of it: the
model tensors it holds (`weights_bytes`) and its KV cache after the last timed run (`kv_bytes`; runtime/held_memory.py).
"""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.qlinear import QLinearPerGrp
from ..progress import bar
from ..runtime.chunked_prefill import forward_chunked
from ..runtime.memory import proc_kb_field


@dataclass
class LengthResult:
    prompt_tokens: int
    new_tokens: int
    batch: int
    repeats: int
    total_ms: float
    total_ms_min: float
    total_ms_max: float
    prefill_ms: float
    time_per_token_ms: float
    tokens_per_s: float
    prefill_tokens_per_s: float
    achieved_gb_s: float
    peak_rss_bytes: int
    weights_bytes: int | None         # the model tensors the engine holds (None: the engine does not say)
    kv_bytes: int | None              # its KV cache after the last timed run (prompt + new tokens held)


def weight_bytes_per_token(model: nn.Module, embed: nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter and quantized buffer once, but only one row of
    the embedding table (unless the table is also the tied lm_head, which reads all of it)."""
    seen: set[int] = set()           # tensor identities (tied weights are one Parameter; works on meta tensors)
    total = 0
    for module in model.modules():
        if module is embed:
            continue
        tensors = list(module.parameters(recurse=False))
        if isinstance(module, QLinearPerGrp):
            tensors += [t for t in (module.packed, module.scales, module.zeros, module.mins, module.bias) if t is not None]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    table = embed.weight
    if id(table) not in seen:
        total += table.shape[1] * table.element_size()
    return total


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: VmHWM is reset by writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident memory since the last `reset_peak_rss` (VmHWM), else since the process started."""
    peak = proc_kb_field("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.inference_mode()
def generate_timed(engine, prompt: torch.Tensor, new_tokens: int, profiler=None) -> tuple[float, float]:
    """-> (prefill seconds, decode seconds) of one greedy generation of `new_tokens` tokens for every row of
    `prompt` (B, L)."""
    B, L = prompt.shape
    engine.start(B, L + new_tokens)
    mask = torch.ones(B, L + new_tokens, dtype=torch.long)
    if profiler is not None:
        profiler.phase = "prefill"
    t0 = time.perf_counter()
    logits = forward_chunked(engine, prompt, torch.arange(L).expand(B, L), mask[:, :L])
    token = logits[:, -1].argmax(-1, keepdim=True)                             # (B, 1)
    t1 = time.perf_counter()
    if profiler is not None:
        profiler.phase = "decode"
    for i in range(new_tokens - 1):
        logits = engine.forward(token, torch.full((B, 1), L + i), mask[:, :L + i + 1])
        token = logits[:, -1].argmax(-1, keepdim=True)
    return t1 - t0, time.perf_counter() - t1


def measure_length(engine, prompt: torch.Tensor, new_tokens: int, repeats: int, bytes_per_token: int) -> LengthResult:
    """`prompt` (B, L); `bytes_per_token`: weight bytes read per forward step."""
    reset_peak_rss()
    B, L = prompt.shape
    runs = [generate_timed(engine, prompt, new_tokens) for _ in range(repeats)]
    totals = [(p + d) * 1e3 for p, d in runs]
    prefill = statistics.median(p for p, _ in runs) * 1e3
    per_token = statistics.median(d / (new_tokens - 1) for _, d in runs) * 1e3
    steps_s = 1e3 / per_token
    return LengthResult(L, new_tokens, B, repeats, statistics.median(totals), min(totals), max(totals),
                        prefill, per_token, B * steps_s, B * L / (prefill / 1e3),
                        bytes_per_token * steps_s / 1e9, peak_rss_bytes(), getattr(engine, "weights_bytes", None),
                        getattr(engine, "kv_bytes", None))


def warm_up(engine, prompt: torch.Tensor) -> None:
    generate_timed(engine, prompt, 2)


def benchmark_lengths(engine, tokenizer, lengths: list[int], new_tokens: int, repeats: int, bytes_per_token: int,
                      context: int, on_length=None, batch: int = 1) -> list[dict]:
    """The benchmark of `engine` at each prompt length: `batch` prompts, the first `batch` runs of L tokens of the
    shipped test split; one warm-up, then `measure_length`. A length whose prompt + new tokens exceed `context` gets
    a row {"prompt_tokens", "skipped"}. `on_length(L, prompt)` runs after each measured length (the profiler)."""
    from ..data_sources import corpus_split
    from ..errors import UserError

    text = corpus_split("test").read_text(encoding="utf-8")
    stream = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if batch * max(lengths) > stream.numel():
        raise UserError(f"{batch} prompt(s) of the longest length ({max(lengths)} tokens) need more text than the "
                        f"benchmark text has ({stream.numel()} tokens).", "Use shorter prompt lengths or a smaller "
                        "--batch.")
    runnable = [L for L in lengths if L + new_tokens <= context]

    def prompts(L: int) -> torch.Tensor:
        return stream[: batch * L].view(batch, L)                                     # (batch, L)

    if runnable:
        warm_up(engine, prompts(runnable[0]))
    rows = []
    for L in bar(lengths, "benchmark", unit="length"):
        if L not in runnable:
            rows.append({"prompt_tokens": L, "skipped": f"exceeds the model's context of {context} tokens"})
            continue
        rows.append(vars(measure_length(engine, prompts(L), new_tokens, repeats, bytes_per_token)))
        if on_length is not None:
            on_length(L, prompts(L))
    return rows

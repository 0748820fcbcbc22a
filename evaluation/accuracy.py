"""Teacher-forced accuracy of a target against a float reference (tt-metal's demo metrics), any target.

Protocol per evaluation window of L tokens (perplexity windows, docs/quantization.md, "Perplexity"): the reference engine scores the
whole window in one forward; the target engine prefills the first `prefill` tokens in one call (prefill mode)
and is then fed the window's remaining tokens one at a time (decode mode, its KV cache in use), so every op group
of both modes is exercised. At each position p = 0 .. L-2 (predicting token p+1):
  top-1   the target's argmax equals the reference's argmax
  top-5   the reference's argmax is among the target's five largest logits
  PCC     comp_pcc of the two logit vectors (evaluation/parity.py)
  NLL     of the true next token, for both engines (perplexity over the scored positions)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..progress import bar
from ..runtime.chunked_prefill import forward_chunked
from .parity import pcc


@dataclass
class PositionRow:
    window: int
    position: int
    mode: str                 # prefill or decode (how the target produced these logits)
    token: int                # the input token at this position
    reference_top1: int
    target_top1: int
    pcc: float


@dataclass
class AccuracyReport:
    windows: int
    seqlen: int
    prefill: int
    positions: int
    top1: float               # fraction of positions
    top5: float
    top1_prefill: float
    top1_decode: float
    mean_pcc: float
    min_pcc: float
    reference_ppl: float
    target_ppl: float
    rows: list[PositionRow] = field(default_factory=list)


@torch.no_grad()
def target_logits(engine, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """ids (L,) -> logits (L, V): one prefill call of `prefill` tokens, then one decode call per token."""
    L = ids.numel()
    engine.start(1, L)
    first = forward_chunked(engine, ids[None, :prefill], torch.arange(prefill)[None],
                            torch.ones(1, prefill, dtype=torch.long), last_only=False)[0].float()                                 # (prefill, V)
    steps = [first]
    for p in range(prefill, L):
        steps.append(engine.forward(ids[None, p:p + 1], torch.tensor([[p]]), torch.ones(1, p + 1, dtype=torch.long),
                                    last_only=True)[0].float())                      # (1, V)
    return torch.cat(steps)


@torch.no_grad()
def teacher_forced_accuracy(reference, target, windows: torch.Tensor, prefill: int) -> AccuracyReport:
    """windows (n, L) token ids; `prefill` tokens per window go through the target's prefill path."""
    n, L = windows.shape
    if not 1 <= prefill < L:
        raise ValueError(f"prefill must be in [1, {L - 1}], not {prefill}")
    rows, nll_ref, nll_tgt = [], 0.0, 0.0
    top1 = top5 = 0
    for w, ids in enumerate(bar(windows, "accuracy", unit="window")):
        reference.start(1, L)
        ref = forward_chunked(reference, ids[None], torch.arange(L)[None], torch.ones(1, L, dtype=torch.long),
                              last_only=False)[0].float()                          # (L, V)
        tgt = target_logits(target, ids, prefill)                                    # (L, V)
        ref, tgt, nxt = ref[:-1], tgt[:-1], ids[1:]
        nll_ref += F.cross_entropy(ref, nxt, reduction="sum").item()
        nll_tgt += F.cross_entropy(tgt, nxt, reduction="sum").item()
        r1 = ref.argmax(-1)                                                          # (L-1,)
        t5 = tgt.topk(5, dim=-1).indices                                             # (L-1, 5)
        top1 += int((t5[:, 0] == r1).sum())
        top5 += int((t5 == r1[:, None]).any(-1).sum())
        for p in range(L - 1):
            rows.append(PositionRow(w, p, "prefill" if p < prefill else "decode", int(ids[p]), int(r1[p]),
                                    int(t5[p, 0]), pcc(ref[p], tgt[p])))
    count = n * (L - 1)
    pccs = [r.pcc for r in rows]
    hit = [r.reference_top1 == r.target_top1 for r in rows]
    pre = [h for h, r in zip(hit, rows) if r.mode == "prefill"]
    dec = [h for h, r in zip(hit, rows) if r.mode == "decode"]
    return AccuracyReport(n, L, prefill, count, top1 / count, top5 / count, sum(pre) / len(pre), sum(dec) / len(dec),
                          sum(pccs) / len(pccs), min(pccs), math.exp(nll_ref / count), math.exp(nll_tgt / count),
                          rows)

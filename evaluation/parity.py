"""Agreement of two engines on the same model (a target against the reference): greedy tokens, logits PCC and
perplexity. Used by the npu parity tests and benchmarks/npu_parity.py.

* `greedy_parity`: greedy decode of each prompt on both engines, teacher-forced on the reference's tokens; the
  first position where the argmaxes differ is reported with the PCC of the two logit vectors there.
* `window_parity`: per perplexity window, the last-token logits PCC and both engines' summed NLL; perplexity of
  each engine over all windows (the protocol of docs/quantization.md, "Perplexity" and "Benchmark"), and the
  standard error of their ratio from the windows' paired NLL differences (int8 activations make an engine's NLL
  wander around the reference's by ~1% per 256-token window on a real model: a few windows measure a relative
  difference only to a few tenths of a percent).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..runtime.chunked_prefill import forward_chunked


def pcc(a: torch.Tensor, b: torch.Tensor) -> float:
    """tt-metal's comp_pcc: 1.0 for identical tensors, 0.0 when either holds NaN/Inf or is constant, else the
    Pearson correlation of the flattened values (float64)."""
    a, b = a.flatten().double(), b.flatten().double()
    if torch.equal(a, b):
        return 1.0
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or a.std() == 0 or b.std() == 0:
        return 0.0
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@dataclass
class GreedyParity:
    prompts: int
    tokens_compared: int
    identical_prompts: int
    first_divergence: list          # per prompt: None or {"step": i, "reference": id, "target": id, "pcc": float,
                                    #   "reference_margin": a[ref id] - a[target id] >= 0 in the reference's logits,
                                    #   "target_margin": b[target id] - b[ref id] >= 0 in the target's}
    min_pcc: float                  # lowest logits PCC over every compared step


@torch.no_grad()
def greedy_parity(reference, target, prompts: list[list[int]], new_tokens: int) -> GreedyParity:
    divergences, min_pcc, compared = [], 1.0, 0
    for ids in prompts:
        x = torch.tensor([ids])
        for e in (reference, target):
            e.start(1, len(ids) + new_tokens)
        mask = torch.ones_like(x)
        positions = torch.arange(len(ids))[None]
        first = None
        for step in range(new_tokens):
            a, b = (forward_chunked(e, x, positions, mask)[0, -1] for e in (reference, target))
            p = pcc(a, b)
            min_pcc = min(min_pcc, p)
            compared += 1
            ta, tb = int(a.argmax()), int(b.argmax())
            if first is None and ta != tb:
                first = {"step": step, "reference": ta, "target": tb, "pcc": p,
                         "reference_margin": float(a[ta] - a[tb]), "target_margin": float(b[tb] - b[ta])}
            x = torch.tensor([[ta]])                       # both continue on the reference's token
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(x)], 1)
        divergences.append(first)
    return GreedyParity(len(prompts), compared, sum(d is None for d in divergences), divergences, min_pcc)


@dataclass
class WindowParity:
    windows: int
    seqlen: int
    reference_ppl: float
    target_ppl: float
    ppl_rel_diff: float             # |target - reference| / reference
    min_last_token_pcc: float
    mean_last_token_pcc: float
    ppl_rel_diff_se: float          # standard error of ppl_rel_diff over the windows (paired NLL differences)


@torch.no_grad()
def window_parity(reference, target, windows: torch.Tensor) -> WindowParity:
    nll = {0: 0.0, 1: 0.0}
    pccs, paired = [], []                                                  # paired: per window, mean NLL difference
    for w in windows:
        ids = w[None]                                                      # (1, T)
        T = ids.shape[1]
        logits = []
        sums = []
        for k, e in enumerate((reference, target)):
            e.start(1, T)
            out = forward_chunked(e, ids, torch.arange(T)[None], torch.ones_like(ids), last_only=False)[0].float()  # (T, V)
            sums.append(F.cross_entropy(out[:-1], ids[0, 1:], reduction="sum").item())
            nll[k] += sums[-1]
            logits.append(out[-1])
        pccs.append(pcc(*logits))
        paired.append((sums[1] - sums[0]) / (T - 1))
    n = windows.shape[0] * (windows.shape[1] - 1)
    ref_ppl, tgt_ppl = math.exp(nll[0] / n), math.exp(nll[1] / n)
    # tgt / ref = exp(mean paired difference): its standard error, to first order, is the paired differences' one
    se = tgt_ppl / ref_ppl * statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else math.inf
    return WindowParity(windows.shape[0], windows.shape[1], ref_ppl, tgt_ppl, abs(tgt_ppl - ref_ppl) / ref_ppl,
                        min(pccs), sum(pccs) / len(pccs), se)

"""A task for mesh runs in the tests (launched as "probe:probe"; this folder is on the ranks' sys.path): the raw
engine outputs of a few models, saved for comparison with single-process runs of the same function."""
from __future__ import annotations

import torch

from edgeawq.runtime.backends import EngineOptions
from edgeawq.runtime.generate import left_pad
from edgeawq.tasks.model import load_with_options

PROMPT_LENGTHS = (7, 3, 12, 1, 9)
STEPS = 6


def prompts(vocab: int = 4096, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@torch.inference_mode()
def run_model(path: str, engine: str = "torch", act_dtype: str = "fp32", batch: int = len(PROMPT_LENGTHS),
              target: str = "cpu", options: dict | None = None) -> dict:
    """Full-sequence logits of a left-padded batch, then STEPS greedy steps (last-token logits and tokens).
    `options`: further EngineOptions fields (e.g. tt_precision, accuracy_level)."""
    model = load_with_options(path, target, EngineOptions(engine=engine, **(options or {})), "fp32", act_dtype)
    e = model.engine
    ids, mask, positions = left_pad(prompts()[:batch], 2)
    e.start(ids.shape[0], 64)
    prefill = e.forward(ids, positions, mask, last_only=False)               # (B, P, V)
    logits, tokens = [prefill[:, -1]], []
    nxt = prefill[:, -1].argmax(-1)
    pos = positions[:, -1:] + 1
    for _ in range(STEPS):
        tokens.append(nxt)
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
        step = e.forward(nxt[:, None], pos, mask)[:, -1]                       # (B, V)
        logits.append(step)
        nxt, pos = step.argmax(-1), pos + 1
    return {"prefill": prefill * mask[:, :prefill.shape[1]].unsqueeze(-1), "logits": torch.stack(logits, 1),
            "tokens": torch.stack(tokens, 1), "engine": e.name}


def probe(runs: list[dict], out: str) -> None:
    """Every run's outputs into one torch file at `out` (a list, in order)."""
    torch.save([run_model(**r) for r in runs], out)

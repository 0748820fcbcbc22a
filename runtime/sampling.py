"""Next-token choice: greedy (temperature 0) or sampling with temperature, top-k and top-p, seeded."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


MAX_SEED = 2**64 - 1   # torch.Generator.manual_seed takes 64-bit seeds


def check_seed(seed: int) -> int:
    if not (type(seed) is int and 0 <= seed <= MAX_SEED):
        raise UserError(f"--seed {seed} is invalid.", f"Use an integer from 0 to {MAX_SEED}.")
    return seed


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0         # nucleus mass kept, in (0, 1]
    top_k: int = 0             # 0 = no top-k filter
    seed: int = 0

    def validate(self) -> "SamplingConfig":
        if not (self.temperature >= 0.0) or self.temperature > 100:
            raise UserError(f"--temperature {self.temperature} is invalid.",
                            "Use 0 for greedy decoding or a positive value such as 0.7 (at most 100).")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"--top_p {self.top_p} is invalid.", "Use a value in (0, 1]; 1 disables nucleus sampling.")
        if self.top_k < 0:
            raise UserError(f"--top_k {self.top_k} is invalid.", "Use 0 (no top-k filter) or a positive integer.")
        check_seed(self.seed)
        return self


class Sampler:
    def __init__(self, config: SamplingConfig) -> None:
        self.config = config.validate()
        self.generator = torch.Generator().manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> token ids (B,)."""
        c = self.config
        if c.temperature == 0.0:
            return logits.argmax(dim=-1)
        scores = logits.float() / c.temperature
        if c.top_k > 0 and c.top_k < scores.shape[-1]:
            kth = torch.topk(scores, c.top_k, dim=-1).values[:, -1:]          # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if c.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(dim=-1)
            # drop a token when the mass before it already reaches top_p (the top token always stays)
            drop_sorted = probs.cumsum(dim=-1) - probs >= c.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

"""Teacher-forced accuracy metrics (evaluation/accuracy.py) and tt-metal's comp_pcc semantics."""
from __future__ import annotations

import math

import pytest
import torch

from edgeawq.evaluation.accuracy import teacher_forced_accuracy
from edgeawq.runtime.engines import TransformersEngine
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.parity import pcc


def test_comp_pcc_semantics():
    a = torch.randn(100)
    assert pcc(a, a.clone()) == 1.0
    assert pcc(a, torch.full_like(a, float("nan"))) == 0.0
    b = a.clone()
    b[3] = float("inf")
    assert pcc(a, b) == 0.0
    assert pcc(a, torch.ones_like(a)) == 0.0
    assert pcc(a, 2 * a + 1) == pytest.approx(1.0)
    assert pcc(a, -a) == pytest.approx(-1.0)


class Noisy:
    """An engine wrapper adding logit noise: agreement must drop below 1 and PCC below 1."""

    def __init__(self, engine, scale: float) -> None:
        self.engine, self.scale, self.gen = engine, scale, torch.Generator().manual_seed(0)

    def start(self, batch, max_seq_len):
        self.engine.start(batch, max_seq_len)

    def forward(self, *args, **kwargs):
        out = self.engine.forward(*args, **kwargs)
        return out + self.scale * torch.randn(out.shape, generator=self.gen)


def test_identical_engines_agree_everywhere(checkpoints):
    loaded = load_model(checkpoints["llama3"], "fp32", "fp32")
    windows = torch.randint(3, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
    r = teacher_forced_accuracy(TransformersEngine(loaded), TransformersEngine(loaded), windows, 12)
    assert r.positions == 2 * 23 and len(r.rows) == 46
    assert r.top1 == r.top5 == r.top1_prefill == r.top1_decode == 1.0
    assert r.min_pcc > 0.99999 and r.reference_ppl == pytest.approx(r.target_ppl, rel=1e-5)
    assert [row.mode for row in r.rows[:23]] == ["prefill"] * 12 + ["decode"] * 11


def test_noise_lowers_agreement_and_pcc(checkpoints):
    loaded = load_model(checkpoints["llama3"], "fp32", "fp32")
    windows = torch.randint(3, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
    r = teacher_forced_accuracy(TransformersEngine(loaded), Noisy(TransformersEngine(loaded), 3.0), windows, 12)
    assert r.top1 < 1.0 and r.top1 <= r.top5 and r.mean_pcc < 0.999
    assert math.isfinite(r.target_ppl) and r.target_ppl != r.reference_ppl


def test_prefill_length_is_checked(checkpoints):
    loaded = load_model(checkpoints["llama3"], "fp32", "fp32")
    with pytest.raises(ValueError):
        teacher_forced_accuracy(TransformersEngine(loaded), TransformersEngine(loaded), torch.ones(1, 8).long(), 8)

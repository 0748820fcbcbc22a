"""The step cost model: the fit recovers fixed and per-token costs; the prompt budget follows the rule."""
from __future__ import annotations

import random

from edgeawq.serving.step_cost import StepCost


def fed(cost: StepCost, fixed: float, per_token: float, sizes, noise: float = 0.0, seed: int = 0) -> StepCost:
    rng = random.Random(seed)
    for n in sizes:
        cost.add(n, fixed + per_token * n + rng.uniform(-noise, noise))
    return cost


def test_the_fit_recovers_the_fixed_and_per_token_costs():
    cost = fed(StepCost(), 2e-3, 4e-5, [16, 32, 48, 15, 31, 64] * 20, noise=5e-5)
    fixed, per_token = cost.fit()
    assert abs(fixed - 2e-3) < 1e-4 and abs(per_token - 4e-5) < 3e-6


def test_overhead_bound_steps_take_several_chunks_and_compute_bound_steps_one():
    small = fed(StepCost(), 2e-3, 4e-5, [16, 32, 48] * 40)          # a 4 M model: 2 ms per call, 40 us per token
    assert small.prompt_budget(decoding=16, floor=16, ceiling=256) in (65, 66)     # 2 ms / 40 us + 16
    assert small.prompt_budget(decoding=16, floor=16, ceiling=24) == 24
    big = fed(StepCost(), 0.08, 6e-3, [16, 32, 48] * 40)            # a 1B model on 2 cores: 13.3 + 16
    assert big.prompt_budget(decoding=16, floor=16, ceiling=256) == 29
    assert big.prompt_budget(decoding=0, floor=16, ceiling=256) == 16    # never under one chunk


def test_the_budget_stays_at_one_chunk_until_the_fit_can_tell():
    cost = StepCost(min_steps=16)
    assert cost.prompt_budget(16, 16, 256) == 16                        # no steps yet
    fed(cost, 2e-3, 4e-5, [16] * 100)                                   # every step of one size: no slope
    assert cost.fit() is None and cost.prompt_budget(16, 16, 256) == 16


def test_no_measurable_cost_per_token_keeps_one_chunk_and_only_recent_steps_count():
    cost = fed(StepCost(window=64), 2e-3, -1e-6, [16, 32, 48] * 30)
    assert cost.prompt_budget(16, 16, 256) == 16
    fed(cost, 1e-3, 1e-5, [16, 32, 48] * 22)                            # the load changed: the window forgets
    assert cost.prompt_budget(16, 16, 256) in (115, 116)                # 100 + 16

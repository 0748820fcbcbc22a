"""How many prompt tokens a decode step may carry: a cost model of the engine's steps, fitted as they run.

A step that feeds n tokens (one per decoding row plus prompt chunks) costs about `fixed + per_token * n` seconds of
the scheduler thread's CPU time (CPU time, not wall time: under load the thread also waits for the GIL while the
event loop streams tokens, and those waits grow with the traffic, not with the step's tokens): `fixed` is what every
call pays whatever it feeds (Python around the engine, thread hand-offs, sampling), `per_token` the work of one more
token. `StepCost` fits the two by least squares over the last `window` steps (their sizes vary as requests come and
go, which is what makes the fit possible).

The rule (`prompt_budget`): a step carrying prompt tokens may cost at most twice the same step without them,
`fixed + per_token * (decoding + p) <= 2 * (fixed + per_token * decoding)`, so `p <= fixed / per_token + decoding`.
Where the fixed cost weighs (the 4.2 M default model: about 1.2 ms per step and 0.04-0.05 ms per token under 16
clients) two or more chunks go per step, and rows do not sit idle waiting for their prompts: with one chunk per
step, 16 clients of 128-token prompts and 64 new tokens get at most 8 new tokens per step (each request needs 8
steps of prompt). Where every token costs (the 1B shape on two cores: 5-13 ms per token in a step of about 200 ms)
a step carries one chunk, and the time between two tokens of a running request grows by about half while a
newcomer's prompt goes in. The result is clamped to [`floor`, `ceiling`]; until the fit has enough varied steps,
or when it finds no positive cost per token (noise), the budget is `floor`.
"""
from __future__ import annotations

from collections import deque


class StepCost:
    def __init__(self, window: int = 128, min_steps: int = 16) -> None:
        self.samples: deque[tuple[int, float]] = deque()                # (tokens fed, seconds), the last `window`
        self.window, self.min_steps = window, min_steps
        self.sums = [0.0, 0.0, 0.0, 0.0]                                # sum x, y, x*x, x*y over the samples

    def add(self, tokens: int, seconds: float) -> None:
        """One step's size and time (O(1): running sums over the window)."""
        self.samples.append((tokens, seconds))
        self._count(tokens, seconds, 1.0)
        if len(self.samples) > self.window:
            self._count(*self.samples.popleft(), -1.0)

    def _count(self, x: float, y: float, sign: float) -> None:
        s = self.sums
        s[0] += sign * x
        s[1] += sign * y
        s[2] += sign * x * x
        s[3] += sign * x * y

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per token) by least squares, or None (too few steps, or all of one size)."""
        n = len(self.samples)
        if n < self.min_steps:
            return None
        sx, sy, sxx, sxy = self.sums
        mx, my = sx / n, sy / n
        var = sxx / n - mx * mx                                         # token counts are small integers: exact
        if var <= 1e-6:
            return None
        per_token = (sxy / n - mx * my) / var
        return my - per_token * mx, per_token

    def prompt_budget(self, decoding: int, floor: int, ceiling: int) -> int:
        """Prompt tokens a step with `decoding` decode rows may carry (see the module docstring)."""
        fitted = self.fit()
        if fitted is None or fitted[1] <= 0:
            return floor
        fixed, per_token = fitted
        return max(floor, min(ceiling, int(max(fixed, 0.0) / per_token) + decoding))

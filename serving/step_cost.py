"""How many prompt tokens a decode step may carry: a cost model of the engine's steps, fitted as they run.

A step that feeds n tokens (one per decoding row plus prompt chunks) takes about `fixed + per_token * n` seconds:
`fixed` is what every call pays whatever it feeds (Python around the engine, thread wake-ups, the lm_head of the
rows), `per_token` the work of one more token. `StepCost` fits the two by least squares over the last `window`
steps (their sizes vary as requests come and go, which is what makes the fit possible).

The rule (`prompt_budget`): a step carrying prompt tokens may take at most 1.5 times the time of the same step
without them, `fixed + per_token * (decoding + p) <= 1.5 * (fixed + per_token * decoding)`, so
`p <= (fixed / per_token + decoding) / 2`. Where the fixed cost dominates (a small model: a 4 M parameter model's
step of 16 rows costs ~2 ms whatever it feeds) prompts go in several chunks per step and the rows stay busy; where
every token costs (a 1B model on two cores) a step carries one chunk, and the time between two tokens of a running
request grows by at most half while a newcomer's prompt goes in (benchmarks/serve_load.py: a factor 2 let the 1B
shape take two chunks a step, and its inter-token p99 at 16 clients went from about 300 to 551 ms). The result is
clamped to [`floor`, `ceiling`]; until the fit has enough varied steps, or when it finds no positive cost per
token (noise), the budget is `floor`.
"""
from __future__ import annotations

from collections import deque

SLACK = 0.5          # a step with prompt chunks may take (1 + SLACK) times the step without them


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
        return max(floor, min(ceiling, int(SLACK * (max(fixed, 0.0) / per_token + decoding))))

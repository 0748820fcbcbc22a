"""Progress bars for long steps: tqdm on stderr, with a rate and an ETA, shown only when stderr is a terminal and
never under `--quiet` (which sets EDGEAWQ_QUIET=1). Anything may import this module (it imports tqdm lazily)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def bars_enabled() -> bool:
    return not os.environ.get("EDGEAWQ_QUIET") and sys.stderr.isatty()


def bar(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """`iterable`, drawing a bar `desc` while it is consumed (a plain pass-through when bars are off)."""
    if not bars_enabled():
        return iterable
    import shutil

    from tqdm import tqdm

    width = shutil.get_terminal_size((100, 24)).columns            # a terminal that reports 0 columns gets 100
    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, file=sys.stderr, ncols=width)


def log_projection(step_seconds: list[float], total_steps: int, elapsed: float, what: str = "layer") -> None:
    """Where no bar is drawn (stderr is not a terminal) and not under `--quiet`: one line per finished step on
    stderr with the projected total, e.g. `layer 3/32 done in 412.0 s; elapsed 0.34 h, projected total 3.66 h`
    (projection = elapsed + mean step time x steps left)."""
    if os.environ.get("EDGEAWQ_QUIET"):
        return
    done = len(step_seconds)
    projected = elapsed + sum(step_seconds) / done * (total_steps - done)
    print(f"{what} {done}/{total_steps} done in {step_seconds[-1]:.1f} s; elapsed {elapsed / 3600:.2f} h, "
          f"projected total {projected / 3600:.2f} h", file=sys.stderr, flush=True)

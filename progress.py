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

"""Fixtures of the fault-injection suite: the user-error contract of the CLI (`cli` is in tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture
def user_error(cli):
    """user_error(args, *needles): `run_awq args` exits 2 with one paragraph ('Error: ...', no traceback) holding
    every needle, after nothing but progress lines; returns that paragraph."""
    def check(args: list[str], *needles: str) -> str:
        code, _, err = cli(args)
        assert code == 2, err
        assert "Traceback" not in err
        *before, paragraph = err.strip().splitlines()          # progress lines ("[native] ...", bars) may precede
        assert paragraph.startswith("Error: ") and not any("Error" in line for line in before), err
        for needle in needles:
            assert needle in paragraph, err
        return paragraph
    return check

"""Fixtures of the fault-injection suite: run the CLI in-process and check the user-error contract."""
from __future__ import annotations

import pytest

from edgeawq.cli import main


@pytest.fixture
def cli(capsys):
    """cli(args) -> (exit code, stdout, stderr) of `run_awq args`, in-process."""
    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err
    return run


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

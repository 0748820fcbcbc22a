"""The one exception type for problems a user can fix (bad paths, files, flags, prompts).

The CLI prints `UserError` as one paragraph (problem, then fix) and exits with status 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input. `problem` says what is wrong, `fix` how to put it right."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} {fix}")
        self.problem = problem
        self.fix = fix

    def paragraph(self) -> str:
        return f"Error: {self.problem.rstrip()} {self.fix.rstrip()}"

"""The README states exactly two commands for a new user, and CI runs the second one verbatim."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def two_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_has_two_commands_and_ci_runs_the_test_command():
    commands = two_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("python3 -m venv .venv") and "run_awq" in commands[0]
    assert commands[1].startswith("python3 -m venv .venv") and "pytest" in commands[1]
    extracted = subprocess.run(["sed", "-n", r"/^# 2\. set up and run the tests/{n;p;q}", str(ROOT / "README.md")],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == commands[1]
    assert "sed -n '/^# 2\\. set up and run the tests/{n;p;q}' README.md" in (ROOT / ".ci" / "run").read_text()

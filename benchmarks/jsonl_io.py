"""JSON-lines plumbing of the benchmark scripts: run a measuring child process, append results to a file."""
from __future__ import annotations

import json
import os
import subprocess


def run_child(cmd: list[str]) -> dict:
    """Run `cmd` (a benchmark's --child mode) and return the JSON object of its last stdout line; exit with its
    stderr tail when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def append_jsonl(path: str | None, rows: list[dict]) -> None:
    """Append `rows` to `path`, one JSON object a line (nothing when path is None)."""
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

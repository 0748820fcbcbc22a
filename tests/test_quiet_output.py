"""No library warning reaches the user's terminal: the main subcommands run in fresh processes (where Python shows
every warning once) with warnings enabled, and their stderr holds only the tool's own lines."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "run_awq")
OWN = ("[", "{", "Error: ", "quantizing layers", "layer ")  # progress lines, JSON summaries, errors, the bar


def stderr_of(args, tmp_path) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "default", "EDGEAWQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_no_library_warnings(tmp_path):
    ckpt = tmp_path / "q"
    runs = [
        ["quantize", "--out", str(ckpt), "--algorithm", "pergrp"],
        ["decode", "--prompt", "The hacker", "--max_new_tokens", "4"],                       # float, PyTorch
        ["decode", "--model", str(ckpt), "--prompt", "The hacker", "--max_new_tokens", "4"],  # native
        ["decode", "--model", str(ckpt), "--engine", "onnx", "--prompt", "The hacker", "--max_new_tokens", "4"],
        ["perplexity", "--model", str(ckpt), "--seqlen", "128", "--nsamples", "2", "--engine", "torch"],
        ["decode", "--model", str(ckpt), "--target", "tt", "--prompt", "The hacker", "--max_new_tokens", "4"],
    ]
    for args in runs:
        err = stderr_of(args, tmp_path)
        assert "Warning" not in err, f"{args}: {err}"
        strange = [line for line in err.splitlines() if line.strip() and not line.lstrip("\r").startswith(OWN)
                   and "%|" not in line]
        assert not strange, f"{args}: {strange}"

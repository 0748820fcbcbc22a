"""Progress bars: on a terminal every long step draws one (with an ETA); --quiet and a non-terminal stderr draw
none."""
from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = str(Path(sys.executable).parent / "run_awq")


def stderr_on_a_terminal(args, env) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))     # a 100-column terminal
    proc = subprocess.Popen([SCRIPT, *args], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(300) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "EDGEAWQ_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("pq") / "q"
    err = stderr_on_a_terminal(["quantize", "--out", str(out), "--algorithm", "pergrp"], env)
    assert "quantizing layers" in err and "layer/s" in err
    return out


@pytest.mark.parametrize("args,desc", [
    (["perplexity", "--seqlen", "128", "--nsamples", "3", "--engine", "torch"], "perplexity"),
    (["accuracy", "--seqlen", "64", "--nsamples", "2", "--pcc_tokens", "0"], "accuracy"),
    (["benchmark", "--prompt_lengths", "4,8", "--new_tokens", "2", "--repeats", "1"], "benchmark"),
    (["decode", "--prompt", "x", "--max_new_tokens", "2", "--engine", "onnx"], "writing the ONNX graph"),
    (["decode", "--prompt", "x", "--max_new_tokens", "2", "--target", "tt"], "converting tt weights"),
    (["decode", "--prompt", "x", "--max_new_tokens", "2", "--engine", "native"], "packing for the native engine"),
])
def test_each_long_step_draws_a_bar_on_a_terminal(checkpoint, env, args, desc):
    args = [args[0], "--model", str(checkpoint), *args[1:]]
    err = stderr_on_a_terminal(args, {**env, "EDGEAWQ_CACHE": env["EDGEAWQ_CACHE"] + "-" + desc.replace(" ", "-")})
    assert f"{desc}:" in err and "<" in err, err                       # tqdm: "desc: 50%|... [00:01<00:01, ...]"


def test_no_bar_with_quiet_or_without_a_terminal(checkpoint, env):
    args = ["perplexity", "--model", str(checkpoint), "--seqlen", "128", "--nsamples", "3", "--engine", "torch"]
    assert "perplexity:" not in stderr_on_a_terminal(args + ["--quiet"], env)
    plain = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env)
    assert plain.returncode == 0 and "perplexity:" not in plain.stderr and "%|" not in plain.stderr

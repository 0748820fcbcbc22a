"""kill -9 (and Ctrl-C) at random points of quantize, export and the native cache build: afterwards the path holds
the old or the new complete artefact and nothing else is left but the dead writer's temporary, which the next
write removes; the next run works."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeawq.checkpoints.directory import checkpoint_problem, verify_manifest
from edgeawq.npu_backend.export_folder import export_problem

pytestmark = pytest.mark.slow

ENV = {**os.environ, "EDGEAWQ_NO_HUGEPAGES": "1", "PYTHONUNBUFFERED": "1"}


def start(args: list[str], env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeawq.cli", *args], env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def temporaries(parent: Path, name: str) -> list[Path]:
    return sorted(p for p in parent.glob(f".{name}.*") if p.is_dir() or p.is_file())


def kill_while_writing(proc: subprocess.Popen, parent: Path, name: str, delay: float, sig=signal.SIGKILL) -> bool:
    """Send `sig` `delay` seconds after the writer's temporary appears (or when the process ends first); True when
    the signal reached a live process. The process's output is kept in `proc.output` (stdout, stderr)."""
    deadline = time.monotonic() + 120
    while not temporaries(parent, name) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(sig)
    proc.output = proc.communicate(timeout=60)
    return alive


def quantize_args(src, out, bits):
    return ["--task", "quantize", "--model", str(src), "--out", str(out), "--w_bit", str(bits), "--group_size", "32",
            "--n_samples", "4", "--seqlen", "64"]


def bits_of(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["quantization_config"]["bits"]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.6])
def test_kill_during_quantize(checkpoints, tmp_path, delay, cli):
    out = tmp_path / "q"
    assert cli(quantize_args(checkpoints["llama3"], out, 4))[0] == 0
    old = (out / "manifest.json").read_bytes()
    proc = start(quantize_args(checkpoints["llama3"], out, 3))
    killed = kill_while_writing(proc, tmp_path, "q", delay * random.Random(delay).uniform(0.5, 1.5))
    verify_manifest(out)                                       # old or new, complete
    assert (out / "manifest.json").read_bytes() == old or bits_of(out) == 3
    assert killed or proc.returncode == 0
    assert all(p.name.startswith(".q.tmp-") for p in temporaries(tmp_path, "q"))
    assert cli(quantize_args(checkpoints["llama3"], out, 3))[0] == 0                  # the next run works
    assert bits_of(out) == 3 and temporaries(tmp_path, "q") == [] and checkpoint_problem(out) is None


@pytest.fixture
def checkpoint(rtn_llama3):
    return rtn_llama3


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_kill_during_export(checkpoint, tmp_path, delay, cli):
    out = tmp_path / "onnx"
    args = ["--task", "export", "--target", "npu", "--model", str(checkpoint), "--out", str(out)]
    kill_while_writing(start(args), tmp_path, "onnx", delay)
    assert not out.exists() or export_problem(out) is None
    assert cli(args)[0] == 0
    assert export_problem(out) is None and temporaries(tmp_path, "onnx") == []


@pytest.mark.parametrize("delay", [0.0, 0.1])
def test_kill_during_native_cache_build(checkpoint, tmp_path, delay, cli, monkeypatch):
    env = {**ENV, "EDGEAWQ_CACHE": str(tmp_path / "cache")}
    args = ["--task", "decode", "--model", str(checkpoint), "--prompt", "The hacker", "--max_new_tokens", "3",
            "--ignore_eos", "--engine", "native"]
    proc = start(args, env)
    native = tmp_path / "cache" / "native"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (native.exists() and any(native.glob(".*.tmp-*"))) and \
            time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=60)
    monkeypatch.setenv("EDGEAWQ_CACHE", env["EDGEAWQ_CACHE"])
    code, _, err = cli(args)
    assert code == 0 and "engine native" in err, err
    assert [p.name for p in native.iterdir() if p.name.startswith(".")] == []      # the dead writer's litter is gone


def test_ctrl_c_during_quantize(checkpoints, tmp_path):
    out = tmp_path / "q"
    proc = start(quantize_args(checkpoints["llama3"], out, 4) + ["--n_samples", "64"])
    assert kill_while_writing(proc, tmp_path, "q", 0.2, signal.SIGINT)       # during the AWQ search
    err = proc.output[1]
    assert proc.returncode == 130 and "Interrupted." in err and "Traceback" not in err and "Aborted" not in err
    assert not out.exists() and temporaries(tmp_path, "q") == []

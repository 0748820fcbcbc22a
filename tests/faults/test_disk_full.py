"""A full disk: quantize, export, --output and the native weight cache give one paragraph naming the path and the
space (exit 2), leave nothing half-written and keep what was there. On a real small tmpfs where this machine lets
the tests mount one (root, as in CI), and by an injected ENOSPC everywhere."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid

import pytest

from ..conftest import quantize_tiny

from edgeawq.checkpoints import directory
from edgeawq.checkpoints.directory import verify_manifest


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(bytes) -> a folder on a fresh tmpfs of that size (unmounted afterwards)."""
    mounts = []

    def make(size: int):
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-ENOSPC tests cover this")
        mounts.append(point)
        return point
    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def quantize(src, out, *extra):
    return ["--task", "quantize", "--model", str(src), "--out", str(out), "--algorithm", "pergrp",
            "--group_size", "32", *extra]


def size_of(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_quantize_onto_a_full_disk_keeps_the_old_checkpoint(checkpoints, tmp_path, small_fs, cli, user_error):
    probe = tmp_path / "probe"
    assert cli(quantize(checkpoints["llama3"], probe))[0] == 0
    fs = small_fs(size_of(probe) * 3 // 2)               # room for one checkpoint, not for two
    out = fs / "q"
    assert cli(quantize(checkpoints["llama3"], out))[0] == 0
    old = (out / "manifest.json").read_bytes()
    message = user_error(quantize(checkpoints["llama3"], out, "--w_bit", "3"), "The disk is full", str(out),
                         "free", "needs")
    assert "MB" in message
    assert (out / "manifest.json").read_bytes() == old and verify_manifest(out)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    assert os.listdir(fs) == ["q"]                       # no temporary left behind


def test_quantize_refuses_at_once_when_the_estimate_does_not_fit(checkpoints, small_fs, user_error):
    fs = small_fs(64 * 1024)
    user_error(quantize(checkpoints["llama3"], fs / "q"), "The disk is full", "needs about")
    assert os.listdir(fs) == []


def test_output_and_native_cache_on_a_full_disk(quantized_llama, small_fs, user_error, monkeypatch):
    fs = small_fs(256 * 1024)
    with open(fs / "filler", "wb", buffering=0) as f:    # fill the filesystem to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    user_error(["--task", "decode", "--model", str(quantized_llama), "--prompt", "x", "--max_new_tokens", "2",
                "--engine", "torch", "--output", str(fs / "out.json")], "The disk is full", "out.json")
    assert os.listdir(fs) == ["filler"]
    monkeypatch.setenv("EDGEAWQ_CACHE", str(fs / "cache"))
    user_error(["--task", "decode", "--model", str(quantized_llama), "--prompt", "x", "--max_new_tokens", "2",
                "--engine", "native"], "The disk is full", str(fs / "cache"))
    assert not any((fs / "cache").rglob("*.safetensors"))


@pytest.fixture
def quantized_llama(rtn_llama3):
    return rtn_llama3


def test_injected_enospc_at_the_last_write(checkpoints, tmp_path, cli, user_error, monkeypatch):
    out = tmp_path / "q"
    assert cli(quantize(checkpoints["llama3"], out))[0] == 0
    old = (out / "manifest.json").read_bytes()

    def full(folder, version):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "manifest.json"))

    monkeypatch.setattr("edgeawq.checkpoints.quantized_format.write_manifest", full)
    user_error(quantize(checkpoints["llama3"], out, "--w_bit", "3"), "The disk is full", str(out))
    assert (out / "manifest.json").read_bytes() == old and sorted(os.listdir(tmp_path)) == ["q"]
    assert directory.checkpoint_problem(out) is None


def test_a_failed_final_move_is_an_error_not_a_success(checkpoints, tmp_path, monkeypatch):
    """The writer propagates an error of the last step (the move into place): quantize must not report success."""
    out = tmp_path / "q"
    quantize_tiny(checkpoints["llama3"], out, algorithm="pergrp", awq_mode="none")
    old = (out / "manifest.json").read_bytes()

    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("edgeawq.checkpoints.atomic._install", broken)
    with pytest.raises(OSError, match="Input/output error"):
        quantize_tiny(checkpoints["llama3"], out, algorithm="pergrp", awq_mode="none", w_bit=3)
    assert (out / "manifest.json").read_bytes() == old and sorted(os.listdir(tmp_path)) == ["q"]

"""A mesh run that cannot work ends with exit status 2 and one message naming the rank and the cause, never a hang:
a killed rank, a stopped rank (collective timeout), an impossible mesh or flag (refused before any rank starts),
a damaged checkpoint; and its ranks listen on loopback only."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HANG_GUARD_S = 180        # a test that waits longer than this has found a hang (not a speed threshold)


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "EDGEAWQ_QUIET": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgeawq.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def rank_pids(root: int, world: int) -> dict[int, int]:
    """{rank: pid} of a run's ranks (their process names are edgeawq-rankN), once all of them are up."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        found = {}
        for pid in descendants(root):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name.startswith("edgeawq-rank"):
                found[int(name[len("edgeawq-rank"):])] = pid
        if len(found) == world:
            return found
        time.sleep(0.2)
    raise AssertionError("the ranks did not start")


def long_decode(model: str, *extra: str) -> subprocess.Popen:
    proc = start("decode", "--model", model, "--mesh_shape", "1x2", "--prompt", "Unix", "--max_new_tokens", "2000",
                 "--max_seq_len", "2048", "--ignore_eos", *extra)
    assert proc.stdout.read(4) == "Unix"             # rank 0 is streaming: every rank is in the decode loop
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, err


def test_a_killed_rank_ends_the_run_naming_it(mesh_models):
    proc = long_decode(mesh_models["llama-w4g64"])
    ranks = rank_pids(proc.pid, 2)
    os.kill(ranks[1], signal.SIGKILL)
    code, err = finish(proc)
    assert code == 2 and "Rank 1 of 2 was killed by SIGKILL" in err and "Traceback" not in err, err
    assert not [p for p in descendants(proc.pid)]


def test_a_stopped_rank_is_named_when_its_peers_time_out(mesh_models):
    proc = long_decode(mesh_models["llama-w4g64"], "--collective_timeout", "3")
    ranks = rank_pids(proc.pid, 2)
    os.kill(ranks[1], signal.SIGSTOP)
    try:
        code, err = finish(proc)
    finally:
        os.kill(ranks[1], signal.SIGKILL) if Path(f"/proc/{ranks[1]}").exists() else None
    assert code == 2 and "Rank 1 of 2 stopped responding" in err and "3 s" in err, err


def test_ranks_listen_on_loopback_only(mesh_models):
    proc = long_decode(mesh_models["llama-w4g64"])
    try:
        ranks = rank_pids(proc.pid, 2)
        listening = listening_addresses(list(ranks.values()))
    finally:
        proc.kill()                                   # the launcher: its ranks die with it
        proc.communicate(timeout=HANG_GUARD_S)
    assert listening, "gloo listens for its peers"
    assert all(a in ("0100007F", "00000000000000000000000001000000") for a in listening), listening


def listening_addresses(pids: list[int]) -> list[str]:
    """Hex local addresses (as /proc/net/tcp writes them) of the listening TCP sockets the processes hold."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:            # state LISTEN
                out.append(fields[1].split(":")[0])
    return out


@pytest.mark.parametrize("args, words", [
    (["--mesh_shape", "1x16"], "twice"),
    (["--pp", "5"], "--pp 5"),
    (["--mesh_shape", "1x2", "--target", "npu", "--engine", "native"], "cannot run on a mesh of --target npu"),
    (["--mesh_shape", "1x2", "--flash_attention"], "--flash_attention"),
    (["--tt_mesh", "N300"], "needs --target tt"),
    (["--target", "tt", "--tt_mesh", "T3K", "--mesh_shape", "1x2"], "T3K has 8 chips"),
    (["--target", "tt", "--tt_mesh", "N300", "--tt_device", "on"], "--tt_device on"),
    (["--mesh_shape", "3"], "BxM"),
])
def test_impossible_meshes_and_flags_fail_before_any_rank_starts(mesh_models, args, words):
    proc = start("decode", "--model", mesh_models["llama-w4g64"], "--prompt", "Unix", *args)
    code, err = finish(proc)
    assert code == 2 and words in err and "Traceback" not in err and "[mesh]" not in err, err


def test_a_damaged_checkpoint_is_reported_from_the_rank_that_reads_it(mesh_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mesh_models["llama-w4g64"], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code, err = finish(start("decode", "--model", str(broken), "--prompt", "Unix", "--mesh_shape", "1x2"))
    assert code == 2 and "model.safetensors" in err and "Traceback" not in err, err

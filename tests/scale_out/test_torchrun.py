"""Mesh runs under torchrun: the processes torchrun starts join its world instead of starting ranks; on one
machine, and on two hosts (two network namespaces joined by a veth pair, one rank in each, torchrun's c10d
rendezvous and gloo over that link)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

PROMPT = ["--prompt", "The hacker ethic", "--max_new_tokens", "12"]
GUARD_S = 300          # a run longer than this has hung (not a speed threshold)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process(model: str) -> str:
    out = subprocess.run([sys.executable, "-m", "edgeawq.cli", "decode", "--model", model, *PROMPT],
                         capture_output=True, text=True, timeout=GUARD_S, env={**os.environ, "EDGEAWQ_QUIET": "1"})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_torchrun_on_one_machine(mesh_models):
    model = mesh_models["llama-w4g64"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "edgeawq.cli",
                          "decode", "--model", model, "--mesh_shape", "1x2", *PROMPT],
                         capture_output=True, text=True, timeout=GUARD_S, env={**os.environ, "EDGEAWQ_QUIET": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout == single_process(model)                  # rank 0 printed, rank 1 was silent
    assert "engine mesh 1x2/native" in run.stderr


def test_a_torchrun_world_of_the_wrong_size_is_refused(mesh_models):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "edgeawq.cli",
                          "decode", "--model", mesh_models["llama-w4g64"], "--mesh_shape", "1x4", *PROMPT],
                         capture_output=True, text=True, timeout=GUARD_S)
    assert run.returncode != 0 and "torchrun started 2 processes, but --mesh_shape 1x4 --pp 1 needs 4" in run.stderr


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: [(namespace, interface, address)] x 2."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"eaq-{tag}-{i}", f"eaq{tag}v{i}", f"10.78.0.{i + 1}") for i in range(2)]
    made = ip("netns", "add", hosts[0][0])
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (needs root / CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        steps = [("netns", "add", hosts[1][0]),
                 ("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])]
        for ns, dev, addr in hosts:
            steps += [("link", "set", dev, "netns", ns), ("-n", ns, "addr", "add", f"{addr}/24", "dev", dev),
                      ("-n", ns, "link", "set", dev, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            done = ip(*step)
            assert done.returncode == 0, (step, done.stderr)
        yield hosts
    finally:
        for ns, _, _ in hosts:
            ip("netns", "del", ns)


@pytest.mark.slow
def test_two_hosts_over_a_veth_link(mesh_models, two_hosts):
    model = mesh_models["llama-w4g64"]
    endpoint, run_id = f"{two_hosts[0][2]}:{free_port()}", uuid.uuid4().hex
    procs = []
    for i, (ns, dev, addr) in enumerate(two_hosts):
        env = {**os.environ, "EDGEAWQ_QUIET": "1", "GLOO_SOCKET_IFNAME": dev}
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id",
             run_id, "--rdzv_conf", f"is_host={int(i == 0)}", "--local_addr", addr,
             "-m", "edgeawq.cli", "decode", "--model", model, "--mesh_shape", "1x2", *PROMPT],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = [p.communicate(timeout=GUARD_S) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert results[0][0] == single_process(model) and results[1][0] == ""

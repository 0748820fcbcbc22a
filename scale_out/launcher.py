"""Start the ranks of a mesh run, or join the world torchrun started; turn any rank's failure into one error.

Two ways in:
  * `run_awq decode ... --mesh_shape 1x2` alone: this process spawns B*M*N local ranks (torch.multiprocessing,
    spawn), which meet through a file store in a private temporary folder (no listening store socket) and talk
    gloo over the loopback interface (GLOO_SOCKET_IFNAME=lo unless the user set it), so nothing listens beyond
    loopback. This process only watches: rank 0 prints, the other ranks' output is discarded; the first rank to
    fail ends the run (the others are terminated) with exit status 2 and a message naming the rank and the cause.
  * under `torchrun` (RANK / WORLD_SIZE / MASTER_ADDR in the environment, e.g. several machines with --nnodes and
    --rdzv_endpoint): every process joins that world (env:// rendezvous, gloo); its size must be B*M*N. Rank 0
    prints; each rank reports its own error and exits with status 2; torchrun ends the others.

Failure detection: every data collective times out after `--collective_timeout` seconds; a rank that dies is seen
by its exit status, a stuck one (alive, executing a command, silent) is named when its peers' collectives time out.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait

from ..errors import UserError
from .partition import Mesh

GRACE_S = 1.5          # after a first failure: how long to collect the other ranks' reports before judging
STOP_S = 3.0           # terminate -> kill


@dataclass(frozen=True)
class RunSettings:
    mesh: Mesh
    threads_per_rank: int
    collective_timeout: float
    pin: bool
    debug: bool


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def default_threads(local_ranks: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_ranks))


def call_task(task: str, kwargs: dict):
    """`task` ("module:function") called with `kwargs`."""
    module, _, name = task.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _rank_body(rank: int, settings: RunSettings, task: str, kwargs: dict, init_method: str, status) -> None:
    """Everything a rank does between joining the world and leaving it."""
    import torch
    import torch.distributed as dist

    from .comm import COMMAND_TIMEOUT, build_comm
    from .driver import Session, set_current

    mesh = settings.mesh
    torch.set_num_threads(settings.threads_per_rank)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=mesh.world,
                            timeout=COMMAND_TIMEOUT)
    comm = build_comm(mesh, rank, settings.collective_timeout)
    session = Session(comm, settings.threads_per_rank, status, verify=init_method == "env://")
    if rank == 0:
        set_current(session)
        try:
            call_task(task, kwargs)
        finally:
            set_current(None)
        session.shutdown()
    else:
        session.serve()
    dist.destroy_process_group()       # only after success: with a peer gone it would wait for it


def describe_exception(exc: BaseException, debug: bool) -> tuple[str, str, str]:
    """-> (kind, problem, fix) of an exception raised in a rank."""
    if isinstance(exc, UserError):
        return "user", exc.problem, exc.fix
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timeout", text, ""
    if any(s in text.lower() for s in ("connection closed", "connection reset", "broken pipe", "connection refused",
                                       "peer")):
        return "peer", text, ""
    return "error", text + ("\n" + traceback.format_exc() if debug else ""), ""


def exit_with(launcher_pid: int) -> None:
    """End this rank when the launcher ends (however it ends: a killed launcher leaves no ranks behind). The rank's
    parent is the fork server, which outlives the launcher while ranks run, so a watcher thread waits on a pidfd of
    the launcher (Linux >= 5.3; else it polls once a second)."""
    import select
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(launcher_pid)
        except (AttributeError, OSError):
            fd = None
        while True:
            if fd is not None:
                select.select([fd], [], [])
                os._exit(3)
            try:
                os.kill(launcher_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="edgeawq-launcher-watch", daemon=True).start()


def name_process(rank: int) -> None:
    """Show the rank in ps / top (the process name, 15 characters at most)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(f"edgeawq-rank{rank}"[:15])
    except OSError:
        pass


def _spawned_rank(rank: int, settings: RunSettings, task: str, kwargs: dict, init_method: str, status, errors,
                  cores: list[int], launcher_pid: int) -> None:
    """Entry point of a spawned rank: quiet unless rank 0, pinned, errors reported to the launcher."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is the launcher's to handle
    exit_with(launcher_pid)
    name_process(rank)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if rank != 0:
        os.environ["EDGEAWQ_QUIET"] = "1"
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    if settings.pin and cores:
        per = settings.threads_per_rank
        os.sched_setaffinity(0, {cores[(rank * per + i) % len(cores)] for i in range(per)})
    try:
        _rank_body(rank, settings, task, kwargs, init_method, status)
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the launcher, which decides the message
        errors.put((rank, *describe_exception(exc, settings.debug)))
        sys.stdout.flush()
        os._exit(2)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _verdict(reports: dict[int, tuple], exits: dict[int, int], status, world: int, timeout: float) -> UserError:
    """The one error of a failed run, from what the ranks reported and how they ended."""
    for kind in ("user", "error"):
        for rank in sorted(reports):
            if reports[rank][0] == kind:
                _, problem, fix = reports[rank]
                where = f" (on rank {rank})" if rank else ""
                return UserError(problem + where, fix or "This is a bug of the tool if the input is valid; rerun "
                                 "with --debug for the traceback.")
    died = [r for r, code in sorted(exits.items()) if code != 0 and r not in reports]
    if died:
        r = died[0]
        code = exits[r]
        how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code}"
        return UserError(f"Rank {r} of {world} {how} without reporting an error; the run was stopped.",
                         "Check the machine's memory (an out-of-memory kill) and logs, then rerun.")
    waiting = sorted(r for r, rep in reports.items() if rep[0] in ("timeout", "peer"))
    silent = [r for r in range(world) if r not in reports and r not in exits]
    stuck = [r for r in silent if status[r] == 1] or silent      # busy and silent first, else any silent one
    if waiting and stuck:
        return UserError(f"Rank {stuck[0]} of {world} stopped responding: it sent nothing for {timeout:g} s while "
                         f"rank(s) {', '.join(map(str, waiting))} waited for it in a collective; the run was stopped.",
                         "Check that rank's machine (load, a stopped or swapped-out process), or raise "
                         "--collective_timeout for very slow steps.")
    r = waiting[0] if waiting else 0
    return UserError(f"Rank {r} of {world} failed in a collective ({reports.get(r, ('', 'no report'))[1]}); the "
                     "run was stopped.", "Check the ranks' machines and network, or raise --collective_timeout.")


def spawn(settings: RunSettings, task: str, kwargs: dict) -> None:
    """Run `task(**kwargs)` on rank 0 of `settings.mesh.world` local ranks; raise the run's error as a UserError."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["edgeawq.scale_out.preload"])
    world = settings.mesh.world
    status = ctx.Array("b", world, lock=False)
    errors = ctx.SimpleQueue()
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="edgeawq-mesh-") as tmp:
        init_method = f"file://{tmp}/store"
        procs = [ctx.Process(target=_spawned_rank, args=(r, settings, task, kwargs, init_method, status, errors,
                                                          cores, os.getpid()), daemon=False) for r in range(world)]
        try:
            for p in procs:
                p.start()
            _watch(procs, status, errors, settings)
        except KeyboardInterrupt:
            _stop(procs)
            raise
        finally:
            _stop(procs)


def _watch(procs, status, errors, settings: RunSettings) -> None:
    world = len(procs)
    exits: dict[int, int] = {}
    reports: dict[int, tuple] = {}
    failed_at = None
    while True:
        live = [p for r, p in enumerate(procs) if r not in exits]
        if live:
            wait([p.sentinel for p in live], timeout=0.2)
        for r, p in enumerate(procs):
            if r not in exits and p.exitcode is not None:
                exits[r] = p.exitcode
        while not errors.empty():
            rank, *report = errors.get()
            reports[rank] = tuple(report)
        if failed_at is None and (reports or any(code != 0 for code in exits.values())):
            failed_at = time.monotonic()
        if failed_at is not None and (time.monotonic() - failed_at > GRACE_S or len(exits) == world):
            while not errors.empty():
                rank, *report = errors.get()
                reports[rank] = tuple(report)
            raise _verdict(reports, exits, status, world, settings.collective_timeout)
        if len(exits) == world:
            return


def _stop(procs) -> None:
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + STOP_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def join_torchrun(settings: RunSettings, task: str, kwargs: dict) -> None:
    """This process is one rank of a torchrun world: run its part; an error is reported here as a UserError."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != settings.mesh.world:
        raise UserError(f"torchrun started {world} processes, but --mesh_shape {settings.mesh.dp}x{settings.mesh.tp} "
                        f"--pp {settings.mesh.pp} needs {settings.mesh.world}.",
                        "Make --nnodes x --nproc_per_node equal B * M * N.")
    if rank != 0:
        os.environ["EDGEAWQ_QUIET"] = "1"
        sys.stdout = open(os.devnull, "w")
    try:
        _rank_body(rank, settings, task, kwargs, "env://", None)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a rank's failure becomes its one-paragraph error
        kind, problem, fix = describe_exception(exc, settings.debug)
        raise UserError(f"Rank {rank} of {world}: {problem}", fix or "Rerun with --debug for the traceback; when "
                        "another rank failed first, its message names the cause.") from None


def run(settings: RunSettings, task: str, kwargs: dict) -> None:
    """Run `task` ("module:function", called with `kwargs` on rank 0) on the mesh of `settings`."""
    if under_torchrun():
        join_torchrun(settings, task, kwargs)
    else:
        spawn(settings, task, kwargs)

"""`run_awq serve`: the OpenAI-compatible server (serving/), and the model and scheduler it runs (also `chat`'s)."""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import replace

from ..errors import UserError
from ..runtime.backends import EngineOptions
from ..runtime.generate import eos_ids, resolve_max_seq_len
from .model import load_with_options

MAX_SLOTS = 64
# Prompt tokens per decode step while serving (--prefill_chunk): each step that carries a prompt chunk delays every
# running request by that chunk's prefill. benchmarks/serve_load.py, 16 clients, 1B shape: 128 tokens per step gave
# an inter-token p99 of 1207 ms and 34 output tok/s, 16 tokens 204 ms and 47 tok/s (README, "Serving").
SERVE_PREFILL_CHUNK = 16


def check_serving_flags(target: str, options: EngineOptions, slots: int, max_queue: int,
                        threads: int | None = None) -> None:
    """Refuse what the scheduler cannot run, before a model is loaded."""
    if threads is not None and not 1 <= threads <= os.cpu_count():
        raise UserError(f"--threads {threads} is invalid.", f"Use 1 to {os.cpu_count()} (this machine's cores).")
    if target != "cpu" or options.engine not in ("auto", "native"):
        where = f"--target {target}" if target != "cpu" else f"--engine {options.engine}"
        raise UserError(f"Serving runs on the native engine (--target cpu --engine native); {where} cannot take "
                        "requests that join and leave a running batch (its KV cache has no per-sequence rows).",
                        "Drop the flag, or use `run_awq decode` on that target.")
    if not 1 <= slots <= MAX_SLOTS:
        raise UserError(f"--max_batch {slots} is invalid.", f"Use 1 to {MAX_SLOTS} concurrent sequences.")
    if max_queue < 0:
        raise UserError(f"--max_queue {max_queue} is invalid.", "Use 0 or more waiting requests.")


def serving_model(model_path: str | None, options: EngineOptions, dtype: str, max_seq_len: int | None,
                  slots: int, max_queue: int, target: str = "cpu", threads: int | None = None):
    """Load the checkpoint on the native engine (`threads` compute threads; None: torch's count, all cores) and
    start a scheduler of `slots` rows -> (Model, Scheduler)."""
    import torch

    from ..serving.scheduler import Scheduler

    check_serving_flags(target, options, slots, max_queue)
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_with_options(model_path, "cpu", replace(options, engine="native"), dtype)
    engine = model.engine
    if not getattr(engine, "continuous_batching", False):
        raise UserError(f"The {engine.name} engine cannot serve: its rows cannot join and leave a running batch.",
                        "Serve a quantized checkpoint that the native engine runs (`run_awq decode --engine native` "
                        "says why it cannot).")
    context = resolve_max_seq_len(max_seq_len, model.loaded.config)
    chunk = SERVE_PREFILL_CHUNK if options.prefill_chunk is None else options.prefill_chunk or context  # 0: whole
    scheduler = Scheduler(engine, eos_ids(model.tokenizer, model.loaded.config), slots, context, max_queue, chunk)
    return model, scheduler


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: a free one), or a UserError naming the address."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is invalid.", "Use a TCP port from 1 to 65535 (0 picks a free one).")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise UserError(f"The server cannot listen on {host}:{port}: {exc.strerror or exc}.",
                        "Pick another --port (0 picks a free one), or a --host address of this machine.") from None
    return sock


def http_server(app):
    """The uvicorn server of an ASGI app: httptools' parser, no access log."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, http="httptools"))


def run_loop(main) -> None:
    """Run the server's coroutine on uvloop (libuv), or on asyncio's own loop where uvloop does not exist."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def serve_task(target: str, model_path: str | None, engine_options: EngineOptions, dtype: str,
               max_seq_len: int | None, host: str, port: int, api_key: str | None, max_batch: int, max_queue: int,
               model_name: str | None, max_body_bytes: int, threads: int | None = None) -> None:
    from ..serving.app import Service, ServiceConfig, make_app

    check_serving_flags(target, engine_options, max_batch, max_queue, threads)     # before the port is taken
    if api_key is not None and not api_key.strip():
        raise UserError("--api_key is empty.", "Give a non-empty key, or drop --api_key for no authentication.")
    sock = listen(host, port)
    model, scheduler = serving_model(model_path, engine_options, dtype, max_seq_len, max_batch, max_queue, target,
                                     threads)
    name = model_name or model.loaded.source.name
    service = Service(model.tokenizer, scheduler, ServiceConfig(name, api_key, max_body_bytes))
    server = http_server(make_app(service))
    bound = sock.getsockname()
    print(f"serving {name} on http://{host}:{bound[1]}/v1 ({model.engine.name}, {max_batch} sequences at once, "
          f"context {scheduler.context} tokens{', API key required' if api_key else ''}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    try:
        run_loop(server.serve(sockets=[sock]))
    finally:
        scheduler.close()
        sock.close()

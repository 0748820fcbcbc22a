"""Continuous batching on the native engine: a request's output does not depend on who else runs, rows and KV
blocks come back when requests end or are cancelled, full queues and small KV pools wait or refuse, never crash."""
from __future__ import annotations

import threading
import time

import pytest

from edgeawq.cpu_backend import native_build
from edgeawq.runtime.backends import EngineOptions
from edgeawq.runtime.sampling import SamplingConfig
from edgeawq.serving.scheduler import QueueFull, Ticket
from edgeawq.serving.text_stream import TextStream
from edgeawq.tasks.serve import serving_model

pytestmark = pytest.mark.skipif(native_build.unavailable_reason() is not None,
                                reason=f"native engine: {native_build.unavailable_reason()}")

PROMPTS = [[1] + list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate((5, 37, 12, 70, 3, 24))]


class Run:
    """One submitted request and what it received."""

    def __init__(self, scheduler, prompt, max_tokens=20, sampling=SamplingConfig(), stop=()):
        self.events, self.done = [], threading.Event()
        self.ticket = Ticket(list(prompt), max_tokens, sampling, TextStream(scheduler.engine_tokenizer, list(stop)),
                             self.deliver)
        scheduler.submit(self.ticket)

    def deliver(self, event):
        self.events.append(event)
        if event[0] != "text":
            self.done.set()

    def result(self, timeout=120):
        assert self.done.wait(timeout), "the request never finished"
        return self.ticket.generated, self.events[-1]


def start(path, slots=4, chunk=16, max_queue=16, **kv):
    model, scheduler = serving_model(str(path), EngineOptions(prefill_chunk=chunk, **kv), "fp32", 256, slots,
                                     max_queue)
    scheduler.engine_tokenizer = model.tokenizer
    return scheduler


@pytest.fixture(scope="module")
def head_w4(checkpoints, tmp_path_factory):
    """The tiny llama3 with a quantized lm_head (the native engine computes it for the fed rows only)."""
    from ..conftest import quantize_tiny

    out = tmp_path_factory.mktemp("head") / "q"
    quantize_tiny(checkpoints["llama3"], out, algorithm="pergrp", awq_mode="none", lm_head=True,
                  lm_head_group_size=32)
    return out


@pytest.fixture(params=["float-head", "w4-head"])
def scheduler(request, rtn_llama3, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    s = start(rtn_llama3 if request.param == "float-head" else request.getfixturevalue("head_w4"))
    yield s
    s.close()


def test_status_reports_the_step_cost_model_once_fitted(scheduler):
    st = scheduler.status()
    assert st["prompt_tokens_per_step"] == 16 and "step_fixed_ms" not in st     # no steps yet: one chunk
    runs = [Run(scheduler, p * 3) for p in PROMPTS]                            # prompts of several chunks
    for r in runs:
        r.result()
    st = idle(scheduler)
    assert st["steps"] >= 16 and st["prompt_tokens_per_step"] >= 16
    assert "step_fixed_ms" in st and "step_per_token_ms" in st                 # steps of varied sizes: a fit


def idle(scheduler, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        st = scheduler.status()
        if st["running"] == 0 and st["waiting"] == 0:
            return st
        time.sleep(0.01)
    raise AssertionError(scheduler.status())


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(0.8, 0.9, 20, seed=7)], ids=["greedy", "seeded"])
def test_a_request_gets_the_same_tokens_alone_and_batched(scheduler, sampling):
    alone = [Run(scheduler, p, sampling=sampling).result()[0] for p in PROMPTS]
    first = [Run(scheduler, p, sampling=sampling) for p in PROMPTS[:3]]   # more requests than rows: some wait
    time.sleep(0.05)
    later = [Run(scheduler, p, sampling=sampling) for p in PROMPTS[3:]]  # join a running batch mid-decode
    batched = [r.result()[0] for r in first + later]
    assert batched == alone
    assert all(len(t) > 0 for t in alone)
    st = idle(scheduler)
    assert st["kv_blocks_in_use"] == 0 and st["kv_blocks_reserved"] == 0


def test_prefill_chunk_0_feeds_whole_prompts(rtn_llama3, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    s = start(rtn_llama3, chunk=0)
    try:
        assert s.prefill_chunk == 256
        tokens, done = Run(s, PROMPTS[3], max_tokens=3).result()
        assert done[0] == "done" and s.status()["steps"] <= 3                  # the 70-token prompt in one step
    finally:
        s.close()


def test_usage_and_finish_reasons(scheduler):
    tokens, done = Run(scheduler, PROMPTS[1], max_tokens=5).result()
    assert done[0] == "done" and len(tokens) <= 5
    assert done[2] == {"prompt_tokens": len(PROMPTS[1]), "completion_tokens": len(tokens),
                       "total_tokens": len(PROMPTS[1]) + len(tokens)}
    assert done[1] == ("length" if len(tokens) == 5 else "stop")


def test_a_cancelled_request_frees_its_row_and_blocks_at_once(scheduler):
    run = Run(scheduler, PROMPTS[3], max_tokens=180)
    while not run.ticket.generated:
        time.sleep(0.005)
    scheduler.cancel(run.ticket)
    st = idle(scheduler)
    assert st["kv_blocks_in_use"] == 0 and len(run.ticket.generated) < 180
    assert Run(scheduler, PROMPTS[0]).result()[1][0] == "done"          # the row serves the next request


def test_a_full_queue_refuses_at_once(rtn_llama3, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    s = start(rtn_llama3, slots=1, max_queue=1)
    try:
        a, b = Run(s, PROMPTS[3], max_tokens=150), Run(s, PROMPTS[0], max_tokens=3)
        with pytest.raises(QueueFull):
            Run(s, PROMPTS[1])
        s.cancel(a.ticket)
        assert b.result()[1][0] == "done"
    finally:
        s.close()


def test_a_small_kv_pool_makes_requests_wait_not_fail(rtn_llama3, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    s = start(rtn_llama3, slots=4, kv_block_size=16, kv_max_blocks=8)    # 128 tokens for everyone
    try:
        assert s.capacity_tokens() == 128
        alone = [Run(s, p, max_tokens=40).result()[0] for p in PROMPTS[1:4]]
        runs = [Run(s, p, max_tokens=40) for p in PROMPTS[1:4]]         # 6 + 4 + 7 blocks: one at a time
        assert [r.result()[0] for r in runs] == alone
        assert idle(s)["kv_blocks_in_use"] == 0
    finally:
        s.close()


def test_an_engine_failure_ends_its_requests_and_the_scheduler_goes_on(scheduler, monkeypatch):
    real = scheduler.engine.forward
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler.engine, "forward", failing)
    tokens, last = Run(scheduler, PROMPTS[0]).result()
    assert last[0] == "error" and "injected" in last[1]
    assert idle(scheduler)["kv_blocks_in_use"] == 0
    assert Run(scheduler, PROMPTS[0]).result()[1][0] == "done"

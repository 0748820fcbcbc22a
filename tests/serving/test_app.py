"""The HTTP server, driven by the real `openai` client and by raw HTTP: OpenAI-shaped answers and streams, every
bad request a 4xx with an OpenAI error body (and the server still serving), API keys, queue limits, disconnects."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgeawq.cpu_backend import native_build
from edgeawq.runtime.backends import EngineOptions

pytestmark = pytest.mark.skipif(native_build.unavailable_reason() is not None,
                                reason=f"native engine: {native_build.unavailable_reason()}")
openai = pytest.importorskip("openai")

KEY = "sekret"
MODEL = "tiny"


class Server:
    """`run_awq serve`'s app on a free loopback port, in a thread."""

    def __init__(self, path, api_key=KEY, slots=4, max_queue=16, max_body_bytes=1 << 20, context=256):
        from edgeawq.serving.app import Service, ServiceConfig, make_app
        from edgeawq.tasks.serve import http_server, listen, run_loop, serving_model

        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        model, self.scheduler = serving_model(str(path), EngineOptions(prefill_chunk=32), "fp32", context, slots,
                                              max_queue)
        self.tokenizer = model.tokenizer
        app = make_app(Service(model.tokenizer, self.scheduler, ServiceConfig(MODEL, api_key, max_body_bytes)))
        self.server = http_server(app)
        self.thread = threading.Thread(target=lambda: run_loop(self.server.serve(sockets=[self.sock])), daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=api_key or "none",
                                    max_retries=0)

    def raw(self, method, path, body=None, key=KEY, chunks=None):
        """One request; `chunks`: the body sent in chunked transfer encoding instead (no length announced)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if chunks is not None:
            conn.request(method, path, body=iter(chunks), headers=h, encode_chunked=True)
        else:
            conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        out = resp.status, resp.read()
        conn.close()
        return out[0], json.loads(out[1]) if out[1] else None

    def health(self):
        return self.raw("GET", "/health")[1]

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.scheduler.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import os

    from edgeawq.default_models import resolve
    from ..conftest import quantize_tiny, write_checkpoint

    root = tmp_path_factory.mktemp("serve")
    os.environ.setdefault("EDGEAWQ_CACHE", str(root / "cache"))
    out = root / "q"
    quantize_tiny(write_checkpoint(root / "src", "llama3"), out, algorithm="pergrp", awq_mode="none")
    assert resolve(None)
    return out


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server(ckpt)
    yield s
    s.close()


def wait_idle(server, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        h = server.health()
        if h["running"] == 0 and h["waiting"] == 0:
            return h
        time.sleep(0.02)
    raise AssertionError(server.health())


def test_models_and_health(server):
    assert [m.id for m in server.client.models.list().data] == [MODEL]
    h = server.health()
    assert h["status"] == "ok" and h["slots"] == 4 and h["context"] == 256 and h["kv_blocks_in_use"] == 0


def test_completion_whole_and_streamed_agree(server):
    c = server.client
    whole = c.completions.create(model=MODEL, prompt="The history of", max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("length", "stop")
    prompt_tokens = len(server.tokenizer("The history of")["input_ids"])
    assert whole.usage.prompt_tokens == prompt_tokens
    assert whole.usage.total_tokens == prompt_tokens + whole.usage.completion_tokens
    chunks = list(c.completions.create(model=MODEL, prompt="The history of", max_tokens=12, temperature=0,
                                       stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_whole_and_streamed_agree(server):
    c = server.client
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    whole = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    text = server.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert whole.usage.prompt_tokens == len(server.tokenizer(text, add_special_tokens=False)["input_ids"])
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stop_strings_cut_the_answer(server):
    c = server.client
    full = c.completions.create(model=MODEL, prompt="Once", max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    cut = c.completions.create(model=MODEL, prompt="Once", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_clients_get_their_solo_answers(server):
    prompts = [f"Story number {i}:" for i in range(8)]

    def ask(p):
        return server.client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0).choices[0].text

    solo = [ask(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, prompts))
    assert together == solo
    assert wait_idle(server)["kv_blocks_in_use"] == 0


def test_ignore_eos_generates_max_tokens(server):
    out = server.client.completions.create(model=MODEL, prompt="x", max_tokens=50, temperature=1.0, seed=3,
                                           extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 50 and out.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(server):
    ask = lambda: server.client.completions.create(model=MODEL, prompt="A", max_tokens=12, temperature=0.9,
                                                   top_p=0.95, seed=11, extra_body={"top_k": 40}).choices[0].text
    assert ask() == ask()


LONG = "word " * 400


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/completions", b"{not json", 400, "invalid_json"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, "invalid_body"),
    ("/v1/completions", b"[]", 400, "invalid_body"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 10 ** 9}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": MODEL, "prompt": LONG}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": MODEL, "prompt": [5, 99999999]}, 400, "invalid_value"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "warm"}, 400, "invalid_type"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "frobnicate": True}, 400, "unknown_parameter"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 3}, 400, "unsupported_parameter"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]}, 400,
     "context_length_exceeded"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "invalid_value"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}, 400, "invalid_type"),
    ("/v1/nowhere", {}, 404, "not_found"),
])
def test_bad_requests_get_4xx_openai_errors(server, path, body, status, code):
    got, data = server.raw("POST", path, body)
    assert got == status and data["error"]["code"] == code and data["error"]["message"], data
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert server.health()["status"] == "ok"


def test_wrong_method_and_oversized_body(ckpt):
    s = Server(ckpt, max_body_bytes=4096, slots=1)
    try:
        assert s.raw("GET", "/v1/completions")[0] == 405
        status, data = s.raw("POST", "/v1/completions", {"model": MODEL, "prompt": "x" * 10000})
        assert status == 413 and data["error"]["code"] == "body_too_large"
        status, data = s.raw("POST", "/v1/completions", chunks=[b"x" * 3000] * 4)     # no content-length
        assert status == 413 and data["error"]["code"] == "body_too_large"
        assert s.health()["status"] == "ok"
    finally:
        s.close()


def test_api_key_is_checked_on_every_route(server):
    for method, path, body in (("GET", "/health", None), ("GET", "/v1/models", None),
                               ("POST", "/v1/completions", {"model": MODEL, "prompt": "x"})):
        for key in (None, "wrong"):
            status, data = server.raw(method, path, body, key=key)
            assert status == 401 and data["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="bad", max_retries=0).models.list()


def test_a_full_queue_answers_429(ckpt):
    s = Server(ckpt, slots=1, max_queue=0)
    try:
        done = threading.Event()
        t = threading.Thread(target=lambda: (s.client.completions.create(
            model=MODEL, prompt="Long", max_tokens=200, temperature=0), done.set()))
        t.start()
        while s.health()["running"] == 0:
            time.sleep(0.005)
        status, data = s.raw("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert status == 429 and data["error"]["code"] == "queue_full"
        t.join(120)
        assert done.is_set()
    finally:
        s.close()


def stream_then_hang_up(server, body):
    """Send a streaming request over a raw socket, read until the first event, and close the connection."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while b"data: " not in got:
        got += sock.recv(4096)
    sock.close()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_its_row(server, stream):
    body = {"model": MODEL, "prompt": "Tell me everything", "max_tokens": 240, "temperature": 0, "stream": stream}
    whole = server.client.completions.create(**{**body, "stream": False})
    assert whole.usage.completion_tokens == 240                          # left alone, it runs 240 steps
    steps = server.health()["steps"]
    if stream:
        stream_then_hang_up(server, body)
    else:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        while server.health()["running"] == 0:
            time.sleep(0.002)
        sock.close()
    h = wait_idle(server)
    assert h["kv_blocks_in_use"] == 0 and h["steps"] - steps < 200       # stopped long before 240 tokens

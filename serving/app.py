"""The OpenAI-compatible HTTP API (Starlette): routes, authentication, body limits, streaming, disconnects.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health. Every answer is JSON; every
refusal has an OpenAI error body (serving/protocol.py) and a 4xx status: 400 bad request, 401 missing or wrong API
key, 404 unknown route or model, 405 wrong method, 413 body over the limit, 429 queue full; 500 only for a failure
of the engine itself, which ends that request and not the server. Streams are server-sent events in OpenAI's chunk
format, closed by `data: [DONE]`. A client that disconnects (streaming or not) cancels its request at once: its
batch row and KV blocks are freed before the next decode step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..runtime.sampling import SamplingConfig
from .protocol import ApiError, GenerationRequest, chat_request, completion_request, parse_json
from .scheduler import QueueFull, Scheduler, Ticket
from .text_stream import TextStream


@dataclass
class ServiceConfig:
    model_id: str                   # the name /v1/models lists and requests must give
    api_key: str | None = None      # None: no authentication
    max_body_bytes: int = 1 << 20


class Mailbox:
    """Events from the scheduler's thread to the requests' asyncio queues, with one wake-up of the event loop per
    burst (a decode step hands out a token to every row at once) instead of one per event."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()
        self.pending: list[tuple[asyncio.Queue, tuple]] = []

    def sender(self, queue: asyncio.Queue):
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return lambda event: self.post(queue, event)

    def post(self, queue: asyncio.Queue, event: tuple) -> None:
        with self.lock:
            self.pending.append((queue, event))
            first = len(self.pending) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self.flush)
            except RuntimeError:                       # the loop has closed (server shutdown)
                pass

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class Service:
    """A loaded model behind a scheduler, and what the routes need of it."""

    def __init__(self, tokenizer, scheduler: Scheduler, config: ServiceConfig) -> None:
        self.tokenizer, self.scheduler, self.config = tokenizer, scheduler, config
        self.mailbox = Mailbox()
        self.vocab = len(tokenizer)
        self.created = int(time.time())

    # ---- request -> prompt ids, checked against the context ----
    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        if req.kind == "chat":
            if not getattr(tok, "chat_template", None):
                raise ApiError(400, f"The model {self.config.model_id} has no chat template.", param="messages",
                               code="no_chat_template")
            try:
                text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:                   # the template's own refusal (e.g. roles must alternate)
                raise ApiError(400, f"The chat template refused these messages: {exc}", param="messages",
                               code="invalid_messages") from None
            return tok(text, add_special_tokens=False)["input_ids"]
        if req.prompt_ids is not None:
            bad = [t for t in req.prompt_ids if not 0 <= t < self.vocab]
            if bad:
                raise ApiError(400, f"Token id {bad[0]} is outside the vocabulary (0 to {self.vocab - 1}).",
                               param="prompt", code="invalid_value")
            return req.prompt_ids
        return tok(req.prompt_text)["input_ids"]

    def budget(self, req: GenerationRequest, prompt: list[int]) -> int:
        """max_tokens checked against the context (and the KV pool): the tokens the request may generate."""
        limit = self.scheduler.capacity_tokens()
        if len(prompt) >= limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your prompt is "
                                f"{len(prompt)} tokens, which leaves no room for a completion. Shorten the prompt.",
                           param="messages" if req.kind == "chat" else "prompt", code="context_length_exceeded")
        if req.max_tokens is None:
            return limit - len(prompt)
        if len(prompt) + req.max_tokens > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{len(prompt) + req.max_tokens} tokens ({len(prompt)} in the prompt, "
                                f"{req.max_tokens} for the completion). Reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        return req.max_tokens


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body is {declared} bytes; the limit is {limit}.", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body exceeds the limit of {limit} bytes.", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(service: Service) -> Starlette:
    cfg = service.config

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key", type_="authentication_error")

    async def health(request: Request) -> Response:
        check_key(request)
        status = service.scheduler.status()
        alive = status.pop("alive")
        return JSONResponse({"status": "ok" if alive else "error", "model": cfg.model_id, **status},
                            status_code=200 if alive else 503)

    async def models(request: Request) -> Response:
        check_key(request)
        return JSONResponse({"object": "list", "data": [{"id": cfg.model_id, "object": "model",
                                                         "created": service.created, "owned_by": "edgeawq"}]})

    async def generate(request: Request, parse, kind: str) -> Response:
        check_key(request)
        req = parse(parse_json(await read_body(request, cfg.max_body_bytes)))
        if req.model != cfg.model_id:
            raise ApiError(404, f"The model '{req.model}' does not exist; this server runs '{cfg.model_id}'.",
                           param="model", code="model_not_found")
        prompt = await anyio.to_thread.run_sync(service.prompt_ids, req)
        max_tokens = service.budget(req, prompt)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        events: asyncio.Queue = asyncio.Queue()
        ticket = Ticket(prompt, max_tokens, SamplingConfig(req.temperature, req.top_p, req.top_k, seed),
                        TextStream(service.tokenizer, req.stop), service.mailbox.sender(events),
                        ignore_eos=req.ignore_eos)
        try:
            service.scheduler.submit(ticket)
        except QueueFull as exc:
            raise ApiError(429, f"The server is busy: {exc}. Retry later.", code="queue_full",
                           type_="server_busy") from None
        reply = Reply(kind, cfg.model_id, req)
        if req.stream:
            return StreamingResponse(stream(service, ticket, events, reply), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        return await collect(service, request, ticket, events, reply)

    async def completions(request: Request) -> Response:
        return await generate(request, completion_request, "completion")

    async def chat(request: Request) -> Response:
        return await generate(request, chat_request, "chat")

    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        routes = "POST /v1/completions, POST /v1/chat/completions, GET /v1/models and GET /health"
        message = {404: f"No route {request.url.path}; this server has {routes}.",
                   405: f"{request.method} is not allowed on {request.url.path}; this server has {routes}."
                   }.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, code=code))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, f"Internal error: {exc}", code="internal_error", type_="server_error"))

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                        Exception: server_error})


class Reply:
    """OpenAI response bodies of one request: whole, or as stream chunks."""

    def __init__(self, kind: str, model: str, req: GenerationRequest) -> None:
        self.kind, self.model, self.req = kind, model, req
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def whole(self, text: str, reason: str, usage: dict) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": usage}

    def chunk(self, text: str | None, reason: str | None = None, usage: dict | None = None, first: bool = False,
              no_choice: bool = False) -> str:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
            obj = "chat.completion.chunk"
        else:
            choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}]
            obj = "text_completion"
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [] if no_choice else choices}
        if usage is not None or self.req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"


async def collect(service: Service, request: Request, ticket: Ticket, events: asyncio.Queue, reply: Reply) -> Response:
    """A whole answer; a disconnect while it is made cancels the request."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(disconnected())
    parts = []
    try:
        while True:
            getter = asyncio.create_task(events.get())
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return Response(status_code=499)       # nobody is listening (the finally cancels the request)
            event = getter.result()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return JSONResponse(reply.whole("".join(parts), event[1], event[2]))
            else:
                raise ApiError(500, event[1], code="engine_error", type_="server_error")
    finally:
        watcher.cancel()
        service.scheduler.cancel(ticket)               # no-op once finished


async def stream(service: Service, ticket: Ticket, events: asyncio.Queue, reply: Reply):
    """Server-sent events; closing the stream (a client that went away) cancels the request."""
    try:
        if reply.kind == "chat":
            yield reply.chunk(None, first=True)
        while True:
            event = await events.get()
            if event[0] == "text":
                yield reply.chunk(event[1])
            elif event[0] == "done":
                if reply.req.include_usage:           # OpenAI's form: a last chunk with usage and no choices
                    yield reply.chunk(None, event[1])
                    yield reply.chunk(None, usage=event[2], no_choice=True)
                else:
                    yield reply.chunk(None, event[1], usage=event[2])
                break
            else:
                yield f"data: {json.dumps(ApiError(500, event[1], code='engine_error', type_='server_error').body())}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        service.scheduler.cancel(ticket)

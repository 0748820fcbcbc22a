"""The OpenAI request bodies the server takes, checked field by field, and its error type.

A request is refused with an `ApiError` (HTTP 4xx, an OpenAI-style body {"error": {"message", "type", "param",
"code"}}) for: a body that is not a JSON object; a field this server does not know (OpenAI's own answer to an
unrecognized argument); a known field of the wrong type or out of range; an OpenAI option this server does not
implement set to anything but its neutral value (e.g. `n` other than 1, `logprobs`, penalties other than 0).

Fields of both endpoints: model (str), max_tokens (int >= 1; chat also max_completion_tokens), temperature
([0, 2], default 1 as in OpenAI's API; 0 = greedy), top_p ((0, 1]), top_k (int >= 0, 0 = off; vLLM's and llama.cpp's
extension), ignore_eos (bool: generate max_tokens whatever the model says; vLLM's and llama.cpp's extension, for
load tests), seed (int in [0, 2**64)), stop (str or list of at most 4 non-empty str), n (1), stream (bool),
stream_options ({"include_usage": bool}), user (str), presence_penalty / frequency_penalty (0), logit_bias
(null or {}), logprobs (null / false). /v1/completions: prompt (str, or a list of one str, or a list of token ids),
echo (false), suffix (null), best_of (1); max_tokens defaults to 16 as in OpenAI's API. /v1/chat/completions:
messages (non-empty list of {"role": "system" | "user" | "assistant", "content": str or [{"type": "text", "text":
str}], "name": str}); max_tokens defaults to the rest of the context.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_STOP = 4
MAX_SEED = 2**64 - 1


class ApiError(Exception):
    """A refused request: HTTP `status` and the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """What the scheduler runs: prompt text or token ids, and how to continue it."""
    kind: str                                   # "completion" | "chat"
    model: str
    prompt_text: str | None = None              # completion prompt, or the chat template's output
    prompt_ids: list[int] | None = None         # completion prompt given as token ids
    messages: list[dict] = field(default_factory=list)
    max_tokens: int | None = None               # None: the rest of the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False


def parse_json(raw: bytes) -> dict:
    """The body -> a JSON object, or a 400 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"The request body is not valid UTF-8 (byte {exc.start}).", code="invalid_body") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")
    return body


def _type_error(name: str, want: str) -> ApiError:
    return ApiError(400, f"'{name}' must be {want}.", param=name, code="invalid_type")


def _int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise _type_error(name, "an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"from {lo} to {hi}"
        raise ApiError(400, f"'{name}' is {value}; it must be {bound}.", param=name, code="invalid_value")
    return value


def _number(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise _type_error(name, "a number")
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ApiError(400, f"'{name}' is {value}; it must be in {interval}.", param=name, code="invalid_value")
    return float(value)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if type(value) is not bool:
        raise _type_error(name, "true or false")
    return value


def _neutral(body: dict, name: str, neutral: tuple) -> None:
    """An OpenAI option this server does not implement: only its neutral values pass."""
    if name in body and body[name] not in neutral:
        raise ApiError(400, f"'{name}' = {json.dumps(body[name])} is not supported by this server.", param=name,
                       code="unsupported_parameter")


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _type_error("stop", "a string or a list of strings")
    if len(items) > MAX_STOP or any(s == "" for s in items):
        raise ApiError(400, f"'stop' takes at most {MAX_STOP} non-empty strings.", param="stop", code="invalid_value")
    return items


COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options",
          "user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "ignore_eos"}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
ROLES = ("system", "user", "assistant")


def _common(body: dict, allowed: set[str], kind: str) -> GenerationRequest:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}.", param=unknown[0],
                       code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: the name GET /v1/models lists.", param="model",
                       code="missing_model" if model is None else "invalid_type")
    for name, neutral in (("n", (1, None)), ("presence_penalty", (0, 0.0, None)), ("frequency_penalty", (0, 0.0, None)),
                          ("logit_bias", (None, {})), ("logprobs", (None, False)), ("user", ())):
        if name == "user":
            if "user" in body and not isinstance(body["user"], str):
                raise _type_error("user", "a string")
            continue
        _neutral(body, name, neutral)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _type_error("stream_options", 'an object {"include_usage": true | false}')
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    return GenerationRequest(
        kind=kind, model=model, max_tokens=_int(body, "max_tokens", 1), top_k=_int(body, "top_k", 0) or 0,
        temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
        seed=_int(body, "seed", 0, MAX_SEED), stop=_stop(body), stream=_bool(body, "stream"),
        include_usage=bool(options and _bool(options, "include_usage")), ignore_eos=_bool(body, "ignore_eos"))


def completion_request(body: dict) -> GenerationRequest:
    req = _common(body, COMPLETION_FIELDS, "completion")
    for name, neutral in (("echo", (False, None)), ("suffix", (None,)), ("best_of", (1, None))):
        _neutral(body, name, neutral)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "'prompt' is empty.", param="prompt", code="invalid_value")
        req.prompt_text = prompt
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        req.prompt_ids = list(prompt)
    elif prompt is None:
        raise ApiError(400, "'prompt' is required.", param="prompt", code="missing_prompt")
    else:
        raise _type_error("prompt", "a non-empty string, a list of one string, or a list of token ids (n = 1)")
    if req.max_tokens is None:
        req.max_tokens = 16                                           # OpenAI's default for completions
    return req


def chat_request(body: dict) -> GenerationRequest:
    req = _common(body, CHAT_FIELDS, "chat")
    _neutral(body, "top_logprobs", (None, 0))
    limit = _int(body, "max_completion_tokens", 1)
    if limit is not None:
        req.max_tokens = limit if req.max_tokens is None else min(limit, req.max_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.",
                       param="messages", code="invalid_type" if messages is not None else "missing_messages")
    for i, m in enumerate(messages):
        req.messages.append(_message(m, f"messages[{i}]"))
    return req


def _message(m, where: str) -> dict:
    if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
        raise ApiError(400, f"'{where}' must be an object with 'role', 'content' (and optionally 'name').",
                       param=where, code="invalid_type")
    if m.get("role") not in ROLES:
        raise ApiError(400, f"'{where}.role' is {json.dumps(m.get('role'))}; it must be one of {', '.join(ROLES)}.",
                       param=f"{where}.role", code="invalid_value")
    content = m.get("content")
    if isinstance(content, list):                     # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   and set(p) <= {"type", "text"} for p in content):
            raise ApiError(400, f"'{where}.content' parts must be {{\"type\": \"text\", \"text\": str}} (this model "
                                f"reads text only).", param=f"{where}.content", code="invalid_type")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise _type_error(f"{where}.content", "a string or a list of text parts")
    if "name" in m and not isinstance(m["name"], str):
        raise _type_error(f"{where}.name", "a string")
    return {"role": m["role"], "content": content}

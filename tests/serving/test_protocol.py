"""OpenAI request bodies: what is accepted, and every refusal is a 4xx ApiError naming the field."""
from __future__ import annotations

import pytest

from edgeawq.serving.protocol import ApiError, chat_request, completion_request, parse_json


def refused(fn, body) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(body)
    assert 400 <= info.value.status < 500 and info.value.message
    return info.value


def test_completion_fields_and_defaults():
    req = completion_request({"model": "m", "prompt": "hi", "stop": ".", "seed": 3, "top_k": 5, "n": 1,
                              "presence_penalty": 0, "logprobs": None, "user": "u", "stream": True,
                              "stream_options": {"include_usage": True}})
    assert (req.prompt_text, req.max_tokens, req.temperature, req.top_p, req.top_k, req.seed, req.stop) == \
           ("hi", 16, 1.0, 1.0, 5, 3, ["."])
    assert req.stream and req.include_usage
    assert completion_request({"model": "m", "prompt": ["hi"]}).prompt_text == "hi"
    assert completion_request({"model": "m", "prompt": [1, 2, 3], "max_tokens": 4}).prompt_ids == [1, 2, 3]


def test_chat_fields():
    req = chat_request({"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                 {"type": "text", "text": "b"}]}],
                        "max_tokens": 9, "max_completion_tokens": 5, "temperature": 0})
    assert req.messages[1] == {"role": "user", "content": "ab"}
    assert req.max_tokens == 5 and req.temperature == 0.0
    assert chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}).max_tokens is None


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"),
    ({"model": 3, "prompt": "x"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": ""}, "prompt"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "m", "prompt": {"a": 1}}, "prompt"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "temperature": 2.5}, "temperature"),
    ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "m", "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": "m", "prompt": "x", "top_k": -1}, "top_k"),
    ({"model": "m", "prompt": "x", "seed": -1}, "seed"),
    ({"model": "m", "prompt": "x", "seed": 2**64}, "seed"),
    ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "m", "prompt": "x", "stop": [""]}, "stop"),
    ({"model": "m", "prompt": "x", "stop": 7}, "stop"),
    ({"model": "m", "prompt": "x", "n": 2}, "n"),
    ({"model": "m", "prompt": "x", "echo": True}, "echo"),
    ({"model": "m", "prompt": "x", "logprobs": 3}, "logprobs"),
    ({"model": "m", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "prompt": "x", "stream_options": {"other": 1}}, "stream_options"),
    ({"model": "m", "prompt": "x", "user": 5}, "user"),
    ({"model": "m", "prompt": "x", "ignore_eos": 1}, "ignore_eos"),
    ({"model": "m", "prompt": "x", "bogus": 1}, "bogus"),
    ({"model": "m", "prompt": "x", "messages": []}, "messages"),
])
def test_completion_refusals(body, param):
    assert refused(completion_request, body).param == param


@pytest.mark.parametrize("body, param", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]},
     "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
     "max_completion_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "prompt"),
])
def test_chat_refusals(body, param):
    assert refused(chat_request, body).param == param


@pytest.mark.parametrize("raw, code", [(b"{bad", "invalid_json"), (b"[1, 2]", "invalid_body"),
                                       (b'{"prompt": "\xff"}', "invalid_body"), (b"", "invalid_json")])
def test_body_refusals(raw, code):
    assert refused(parse_json, raw).code == code


def test_error_body_is_openai_shaped():
    err = ApiError(400, "bad", param="x", code="c")
    assert err.body() == {"error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": "c"}}

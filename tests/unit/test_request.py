from __future__ import annotations

import json

import pytest

from sidecar.core.request import (
    ROUTING_TEXT_HEAD_CHARS,
    ROUTING_TEXT_TAIL_CHARS,
    Endpoint,
    bound_routing_text,
    endpoint_for_path,
    parse_request,
)
from sidecar.errors import NotFoundError, RequestError
from sidecar.serving.body import decode_body
from sidecar.serving.statuses import http_status, openai_error_body


def _chat(**fields: object) -> dict[str, object]:
    body: dict[str, object] = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def test_chat_facts() -> None:
    facts = parse_request(
        Endpoint.CHAT,
        _chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": [{"type": "text", "text": "second question"}]},
            ],
            stream=True,
            max_tokens=50,
        ),
    )
    assert facts.routing_text == "second question"
    assert facts.stream is True
    assert facts.max_tokens == 50
    assert facts.prompt_tokens >= 1


def test_completions_prompt_forms() -> None:
    assert parse_request(Endpoint.COMPLETIONS, {"prompt": "say hi"}).routing_text == "say hi"
    assert parse_request(Endpoint.COMPLETIONS, {"prompt": ["a", "b"]}).routing_text == "b"
    tokens = parse_request(Endpoint.COMPLETIONS, {"prompt": [1, 2, 3, 4]})
    assert tokens.routing_text == "" and tokens.prompt_tokens == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto"}, "messages"),
        (_chat(messages=[]), "messages"),
        (_chat(messages="hi"), "messages"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (_chat(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
        (_chat(messages=[{"role": "user"}]), "messages[0].content"),
        (_chat(messages=["hi"]), "messages[0]"),
        (_chat(model=7), "model"),
        (_chat(stream="yes"), "stream"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(max_tokens=True), "max_tokens"),
    ],
)
def test_invalid_chat_bodies_name_the_parameter(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(Endpoint.CHAT, body)
    assert caught.value.param == param
    assert not isinstance(caught.value, NotFoundError)
    assert http_status(caught.value) == 400
    error = json.loads(openai_error_body(caught.value))["error"]
    assert set(error) == {"message", "type", "code", "param"}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "an array"),
        (b"\xff", "UTF-8"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a":' + b"[" * 65 + b"]" * 65 + b"}", "deeper than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"3", "a number"),
    ],
)
def test_decode_body_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(RequestError, match=fragment):
        decode_body(raw)


def test_routing_text_is_bounded() -> None:
    long = "start " + "word " * 50_000 + " end"
    bounded = bound_routing_text(long)
    assert len(bounded) <= ROUTING_TEXT_HEAD_CHARS + ROUTING_TEXT_TAIL_CHARS + 3
    assert bounded.startswith("start") and bounded.endswith("end")


def test_endpoints() -> None:
    assert endpoint_for_path("/v1/chat/completions?x=1") is Endpoint.CHAT
    assert endpoint_for_path("/v1/completions") is Endpoint.COMPLETIONS
    assert endpoint_for_path("/v1/models") is None

"""Arbitrary input never crashes or hangs the request path: a decision or a clean 4xx.

Property-based (hypothesis) over the parser, the routing service behind both edges, and
the Decide API: arbitrary JSON, wrong types, huge and odd strings (surrogates, NUL,
bidi controls), deep nesting, invalid UTF-8, content-part arrays, tool/function messages.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_router.v1 import router_pb2
from sidecar.core.decision import ProviderSnapshot
from sidecar.core.request import Endpoint, RequestFacts, parse_request
from sidecar.core.vote import RouteVerdict, abstention
from sidecar.errors import RequestError
from sidecar.serving.api import RouterApi
from sidecar.serving.body import decode_body
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import RoutingService
from sidecar.serving.statuses import http_status, openai_error_body
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE

# Strings a client can send: any code point, lone surrogates included (json.dumps
# escapes them as \udXXX, exactly what a hostile or buggy client puts on the wire).
odd_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=300
) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "\u200b" * 50, "x" * 20_000])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(odd_text, inner, max_size=5),
    max_leaves=30,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])
content = st.one_of(
    odd_text,
    st.none(),
    st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": odd_text}),
        max_size=3,
    ),
    json_values,
)
message = st.fixed_dictionaries(
    {"role": roles, "content": content},
    optional={"name": odd_text, "tool_call_id": odd_text, "tool_calls": json_values},
)
chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=4) | json_values},
    optional={
        "model": st.sampled_from(["auto", "router:cost", "router:warp", "tiny-1b", "nope"])
        | json_values,
        "max_tokens": st.integers(-5, 10**12) | json_values,
        "stream": st.booleans() | json_values,
        "tools": json_values,
    },
)
raw_bodies = st.one_of(
    chat_bodies.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.integers(1, 5000).map(lambda depth: b'{"messages":' + b"[" * depth + b"]" * depth + b"}"),
)


def _parse(body: bytes) -> RequestFacts:
    return parse_request(Endpoint.CHAT, decode_body(body))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_bodies)
def test_the_parser_answers_facts_or_a_request_error(body: bytes) -> None:
    try:
        facts = _parse(body)
    except RequestError as error:
        assert http_status(error) == 400
        assert json.loads(openai_error_body(error))["error"]["message"]
        return
    assert len(facts.routing_text) <= 1000
    assert facts.routing_text.isprintable()  # what reaches the tokeniser is clean
    facts.routing_text.encode("utf-8")  # and valid Unicode


class _EchoClassifier:
    """Touches the routing text the way a tokeniser would (encode it) and abstains."""

    async def classify(self, text: str) -> RouteVerdict:
        text.encode("utf-8")
        return abstention("below_threshold")


SERVICE = RoutingService(
    table=TWO_TIER_TABLE,
    catalogue=TWO_TIER_CATALOGUE,
    snapshot=ProviderSnapshot,
    classifier=_EchoClassifier(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_bodies, st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/x"]))
def test_the_routing_service_answers_a_decision_or_a_request_error(body: bytes, path: str) -> None:
    try:
        routed = asyncio.run(SERVICE.route(path, {}, body))
    except RequestError as error:
        assert http_status(error) in (400, 404)
        return
    assert routed.decision.upstream in TWO_TIER_CATALOGUE.clusters
    if routed.body is not None:  # a rewritten body is valid JSON in valid UTF-8
        assert json.loads(routed.body.decode("utf-8"))["model"] == routed.decision.model


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_bodies)
def test_decide_answers_a_decision_or_a_client_status(body: bytes) -> None:
    api = RouterApi(SERVICE, RouterMetrics(), None)
    request = router_pb2.DecideRequest(body=body)
    try:
        reply = asyncio.run(api.Decide(request, _FakeContext()))  # type: ignore[arg-type]
    except _Aborted as aborted:
        assert aborted.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        return
    assert reply.upstream in TWO_TIER_CATALOGUE.clusters


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"auto","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"auto","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model":"auto","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
    ],
    ids=["lone-surrogate", "100k-nested", "encoded-surrogate"],
)
def test_the_inputs_that_used_to_crash_the_handler_are_400s(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        asyncio.run(SERVICE.route("/v1/chat/completions", {}, body))
    assert http_status(caught.value) == 400

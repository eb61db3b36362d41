"""The routing path through the real Envoy binary, end to end."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest
from openai import OpenAI

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.devstack.stack import LocalStack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def _chat_body(content: str = "hi", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"model": "auto", "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


def _provider_requests(stack: LocalStack, cluster: str) -> list[dict[str, object]]:
    port = stack.ports.providers[cluster]
    reply = httpx.get(f"http://127.0.0.1:{port}/sim/requests", timeout=5)
    reply.raise_for_status()
    recorded = reply.json()
    return list(recorded["requests"] if isinstance(recorded, dict) else recorded)


def _last_request_with(stack: LocalStack, cluster: str, decision_id: str) -> dict[str, object]:
    for recorded in reversed(_provider_requests(stack, cluster)):
        headers = recorded.get("headers", {})
        assert isinstance(headers, dict)
        if headers.get("x-router-decision-id") == decision_id:
            return recorded
    raise AssertionError(f"{cluster} never saw decision {decision_id}")


def test_chat_completion_lands_where_the_sidecar_chose(stack: LocalStack) -> None:
    reply = httpx.post(stack.base_url + CHAT, json=_chat_body(), timeout=30)
    assert reply.status_code == 200, reply.text
    upstream = reply.headers["x-router-upstream"]
    assert upstream in stack.catalogue.clusters
    assert reply.headers["x-router-route"]
    decision_id = reply.headers["x-router-decision-id"]
    assert len(decision_id) == 32
    assert reply.headers["x-sim-name"] == upstream
    seen = _last_request_with(stack, upstream, decision_id)
    expected_model = stack.catalogue.provider(upstream).model
    assert seen["model"] == expected_model
    assert seen["content_length"] == seen["body_bytes"]
    assert reply.json()["choices"][0]["message"]["content"]


def test_streaming_arrives_incrementally_and_unbroken(stack: LocalStack) -> None:
    body = _chat_body("tell me a story", stream=True, stream_options={"include_usage": True})
    arrivals: list[float] = []
    events: list[str] = []
    with httpx.stream("POST", stack.base_url + CHAT, json=body, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-router-upstream"]
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                arrivals.append(time.monotonic())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 3
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip()
    # The first event reached us before the last one was generated: not one buffered blob.
    assert arrivals[-1] > arrivals[0]


def test_official_openai_client(stack: LocalStack) -> None:
    client = OpenAI(base_url=stack.base_url + "/v1", api_key="not-used-by-the-simulator")
    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content
    stream = client.chat.completions.create(
        model="router:quality",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip()
    legacy = client.completions.create(model="auto", prompt="Say hi")
    assert legacy.choices[0].text


def test_policy_alias_and_explicit_model(stack: LocalStack) -> None:
    quality = httpx.post(stack.base_url + CHAT, json=_chat_body(model="router:quality"))
    assert quality.headers["x-router-upstream"] == "sim-frontier"
    cost = httpx.post(stack.base_url + CHAT, json=_chat_body(), headers={"x-router-policy": "cost"})
    assert cost.headers["x-router-upstream"] == "sim-small"
    explicit = httpx.post(stack.base_url + CHAT, json=_chat_body(model="gpt-4o"))
    assert explicit.headers["x-router-upstream"] == "sim-frontier"
    seen = _last_request_with(stack, "sim-frontier", explicit.headers["x-router-decision-id"])
    assert seen["model"] == "gpt-4o"
    unknown = httpx.post(stack.base_url + CHAT, json=_chat_body(model="gpt-99"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_client_cannot_choose_the_upstream(stack: LocalStack) -> None:
    spoofed = {"x-router-upstream": "sim-frontier", "x-router-route": "frontier"}
    reply = httpx.post(stack.base_url + CHAT, json=_chat_body(), headers=spoofed)
    assert reply.status_code == 200
    assert reply.headers["x-router-upstream"] != "sim-frontier"
    assert reply.headers["x-sim-name"] == reply.headers["x-router-upstream"]
    # A path the sidecar never sees (ext_proc disabled) must not honour it either.
    other = httpx.get(stack.base_url + "/v1/embeddings", headers=spoofed)
    assert other.status_code == 404 and "x-sim-name" not in other.headers


def test_the_model_list_is_the_routers(stack: LocalStack) -> None:
    reply = httpx.get(stack.base_url + "/v1/models", timeout=10)
    assert reply.status_code == 200
    assert "x-sim-name" not in reply.headers  # answered by the sidecar, not a provider
    ids = [model["id"] for model in reply.json()["data"]]
    assert ids[:2] == ["auto", "router:balanced"]
    assert {p.model for p in stack.catalogue.providers} <= set(ids)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2, 3]", 400, "invalid_type"),
        (b'{"model": "auto"}', 400, "missing_required_parameter"),
        (b'{"model": "auto", "messages": "hi"}', 400, "invalid_value"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_value"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": 1}]}', 400, "invalid_value"),
    ],
)
def test_bad_requests_get_openai_errors(
    stack: LocalStack, raw: bytes, status: int, code: str
) -> None:
    reply = httpx.post(
        stack.base_url + CHAT, content=raw, headers={"content-type": "application/json"}
    )
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["type"] == "invalid_request_error"
    assert httpx.post(stack.base_url + CHAT, json=_chat_body()).status_code == 200


def test_body_over_the_limit_gets_413_json(stack: LocalStack) -> None:
    huge = _chat_body("x" * (9 * 1024 * 1024))
    reply = httpx.post(stack.base_url + CHAT, json=huge, timeout=60)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    assert httpx.post(stack.base_url + CHAT, json=_chat_body()).status_code == 200
    assert not stack.dead()


def test_large_body_under_the_limit_is_routed_cheaply(stack: LocalStack) -> None:
    big = _chat_body("please summarise this. " + "lorem ipsum " * 300_000)
    reply = httpx.post(stack.base_url + CHAT, json=big, timeout=60)
    assert reply.status_code == 200, reply.text[:300]
    seen = _last_request_with(
        stack, reply.headers["x-router-upstream"], reply.headers["x-router-decision-id"]
    )
    assert seen["content_length"] == seen["body_bytes"]


def test_decide_api_explains(stack: LocalStack) -> None:
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Decide(
            router_pb2.DecideRequest(body=json.dumps(_chat_body()).encode()), timeout=10
        )
        assert reply.upstream in stack.catalogue.clusters
        assert reply.model_rewritten
        assert reply.explanation.reason
        assert any(c.chosen for c in reply.explanation.candidates)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Decide(router_pb2.DecideRequest(body=b"nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_envoy_route_sets_the_policy(stack: LocalStack) -> None:
    host = {"host": "quality.localhost"}
    by_route = httpx.post(stack.base_url + CHAT, json=_chat_body(), headers=host)
    assert by_route.headers["x-router-upstream"] == "sim-frontier"
    header_wins = httpx.post(
        stack.base_url + CHAT, json=_chat_body(), headers={**host, "x-router-policy": "cost"}
    )
    assert header_wins.headers["x-router-upstream"] == "sim-small"
    models = httpx.get(stack.base_url + "/v1/models", headers=host)
    assert models.status_code == 200

"""POST /explain: Decide's answer as JSON, and OpenAI-style errors for bad calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from inference_router.v1 import router_pb2
from sidecar.core.decision import ProviderSnapshot
from sidecar.serving.explain import EXPLAIN_PATH, explain_handler, is_loopback
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import POLICY_HEADER, Routed, RoutingService
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE

LIMIT = 4096
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


class BrokenService(RoutingService):
    """A service with a bug: every route raises."""

    async def route(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        route_policy: str | None = None,
        decision_id: str | None = None,
        escalate_to: str | None = None,
    ) -> Routed:
        raise RuntimeError("a bug with a secret in its message")


def _service(kind: type[RoutingService] = RoutingService) -> RoutingService:
    return kind(table=TWO_TIER_TABLE, catalogue=TWO_TIER_CATALOGUE, snapshot=ProviderSnapshot)


async def _client(
    service: RoutingService, metrics: RouterMetrics
) -> TestClient[web.Request, web.Application]:
    app = web.Application(client_max_size=LIMIT)
    app.router.add_post(EXPLAIN_PATH, explain_handler(service, metrics, LIMIT))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    started = await _client(_service(), RouterMetrics())
    yield started
    await started.close()


async def _error(reply: object) -> dict[str, object]:
    assert hasattr(reply, "json")
    body = await reply.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert {"message", "type", "code", "param"} <= set(error)
    return error


async def test_the_answer_is_decides_message_as_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.post(EXPLAIN_PATH, json=CHAT, headers={POLICY_HEADER: "quality"})
    assert reply.status == 200
    body = await reply.json()
    # Every field of Decide's message, defaults included, named as in the .proto.
    assert set(body) == {f.name for f in router_pb2.DecideResponse.DESCRIPTOR.fields}
    assert set(body["explanation"]) == {f.name for f in router_pb2.Explanation.DESCRIPTOR.fields}
    assert (body["upstream"], body["policy"], body["tier"]) == ("big", "quality", "frontier")
    assert body["model_rewritten"] is True
    chosen = [c for c in body["explanation"]["candidates"] if c["chosen"]]
    assert [c["cluster"] for c in chosen] == ["big"]
    assert chosen[0]["expected_cost_usd"] > 0
    assert "policy quality" in body["explanation"]["reason"]
    assert len(body["decision_id"]) == 32


async def test_the_path_parameter_explains_a_completions_request(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = {"model": "auto", "prompt": "hello"}
    reply = await client.post(EXPLAIN_PATH, params={"path": "/v1/completions"}, json=body)
    assert reply.status == 200
    reply = await client.post(EXPLAIN_PATH, params={"path": "/v1/embeddings"}, json=body)
    assert reply.status == 404
    assert (await _error(reply))["code"] == "unknown_url"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_type"),
        (json.dumps({**CHAT, "model": "no-such-model"}).encode(), 404, "model_not_found"),
        (b"{" + b" " * LIMIT + b"}", 413, "body_too_large"),
    ],
)
async def test_bad_bodies_get_openai_errors(
    client: TestClient[web.Request, web.Application], body: bytes, status: int, code: str
) -> None:
    reply = await client.post(EXPLAIN_PATH, data=body)
    assert reply.status == status
    assert (await _error(reply))["code"] == code


async def test_a_chunked_body_over_the_limit_is_refused(
    client: TestClient[web.Request, web.Application],
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "auto", "prompt": "'
        for _ in range(LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    reply = await client.post(EXPLAIN_PATH, data=chunks())
    assert reply.status == 413
    assert (await _error(reply))["code"] == "body_too_large"


async def test_a_bad_client_limit_is_a_400_naming_the_header(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.post(EXPLAIN_PATH, json=CHAT, headers={"x-router-max-cost-usd": "-1"})
    assert reply.status == 400
    assert (await _error(reply))["param"] == "x-router-max-cost-usd"


async def test_only_post_is_allowed(client: TestClient[web.Request, web.Application]) -> None:
    assert (await client.get(EXPLAIN_PATH)).status == 405


async def test_a_bug_is_a_500_without_its_text_and_is_counted() -> None:
    metrics = RouterMetrics()
    client = await _client(_service(BrokenService), metrics)
    try:
        reply = await client.post(EXPLAIN_PATH, json=CHAT)
        assert reply.status == 500
        error = await _error(reply)
        assert "secret" not in str(error["message"])
        assert "see the log" in str(error["message"])
    finally:
        await client.close()
    assert b'inference_router_errors_total{kind="explain"} 1.0' in metrics.exposition()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_only_loopback_callers_may_explain(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback

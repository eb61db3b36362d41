"""The router's surface through the real Envoy.

Only the OpenAI paths the router serves are routed (anything else is an OpenAI-style
404 that reaches no provider); local error replies carry no decision headers; and
fail-open works against a provider that refuses router aliases, because Envoy's Lua
filter rewrites them to the default cluster's model when the sidecar is gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack
from tests.integration.test_resilience import control, simulator

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
DECISION_HEADERS = ("x-router-upstream", "x-router-route", "x-router-decision-id", "x-router-model")
DEFAULT = ("sim-mid-a", "llama-3.3-70b-instruct")  # local.yaml's fail-open target


def _chat(model: str | None = "auto", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    if model is not None:
        body["model"] = model
    return {**body, **extra}


def _decision_headers(reply: httpx.Response) -> dict[str, str]:
    return {name: reply.headers[name] for name in DECISION_HEADERS if name in reply.headers}


def _last_seen(stack: LocalStack, cluster: str) -> dict[str, object]:
    recorded = httpx.get(simulator(stack, cluster) + "/sim/requests?limit=1", timeout=5).json()
    last: dict[str, object] = recorded["requests"][-1]
    return last


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/metrics"),
        ("GET", "/"),
        ("GET", "/health"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("POST", "/v1/chat/completions/extra"),
    ],
)
def test_paths_the_router_does_not_serve_are_an_openai_404(
    stack: LocalStack, method: str, path: str
) -> None:
    reply = httpx.request(method, stack.base_url + path, json=_chat(), timeout=30)
    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == "unknown_url" and error["type"] == "invalid_request_error"
    assert f"{method} {path}" in error["message"]
    assert "x-sim-name" not in reply.headers  # no provider saw it
    assert _decision_headers(reply) == {}


def test_decision_headers_come_only_with_a_decision(stack: LocalStack) -> None:
    decided = httpx.post(stack.base_url + CHAT, json=_chat(), timeout=30)
    assert decided.status_code == 200
    assert set(_decision_headers(decided)) == set(DECISION_HEADERS)
    local_replies = {
        "the sidecar's 400": httpx.post(
            stack.base_url + CHAT,
            content=b"{not json",
            headers={"content-type": "application/json"},
            timeout=30,
        ),
        "the sidecar's 404": httpx.post(stack.base_url + CHAT, json=_chat("gpt-99"), timeout=30),
        "Envoy's 413": httpx.post(
            stack.base_url + CHAT, json=_chat("auto", pad="x" * (9 * 1024 * 1024)), timeout=60
        ),
    }
    for what, reply in local_replies.items():
        assert reply.status_code in (400, 404, 413), what
        assert reply.json()["error"]["code"], what
        assert _decision_headers(reply) == {}, f"{what} looks like a decision"


def test_fail_open_rewrites_router_aliases_for_a_strict_provider(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, sidecar_args=("--no-semantic",))
    cluster, model = DEFAULT
    try:
        control(stack, cluster, check_model=True)  # like a real provider: no `auto`
        refused = httpx.post(simulator(stack, cluster) + CHAT, json=_chat(), timeout=30)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        stack.stop_process("sidecar")
        cases = {
            "auto": (CHAT, _chat("auto")),
            "a policy alias, streamed": (CHAT, _chat("router:cost", stream=True)),
            "no model at all": (CHAT, _chat(None)),
            "an explicit model the default serves": (CHAT, _chat(model)),
            "legacy completions": ("/v1/completions", {"model": "auto", "prompt": "Say hi"}),
        }
        for what, (path, body) in cases.items():
            reply = httpx.post(stack.base_url + path, json=body, timeout=30)
            assert reply.status_code == 200, f"{what}: {reply.text}"
            assert reply.headers["x-sim-name"] == cluster, what
            assert _decision_headers(reply) == {
                "x-router-upstream": cluster,
                "x-router-route": "fallback",
                "x-router-model": model,
            }, what
            seen = _last_seen(stack, cluster)
            assert seen["model"] == model, what
            assert seen["content_length"] == seen["body_bytes"], what
        # Only the top-level `model` changes, not look-alikes nested or inside a string.
        tricky = {
            "metadata": {"model": "auto"},
            "messages": [{"role": "user", "content": 'say "model": "auto"'}],
            "model": "auto",
            "max_tokens": 3,
        }
        raw = json.dumps(tricky).encode()
        reply = httpx.post(
            stack.base_url + CHAT, content=raw, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 200, reply.text
        seen = _last_seen(stack, cluster)
        assert seen["model"] == model
        assert seen["body_bytes"] == len(raw) + len(model) - len("auto")  # one replacement
        # Known limit: with the sidecar gone, a model the default cluster does not serve
        # still goes there, and a strict provider refuses it (as it would without us).
        other = httpx.post(stack.base_url + CHAT, json=_chat("gpt-4o"), timeout=30)
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    finally:
        stack.stop()


def test_fail_closed_503_carries_no_decision_headers(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, fail_open=False, sidecar_args=("--no-semantic",))
    try:
        stack.stop_process("sidecar")
        reply = httpx.post(stack.base_url + CHAT, json=_chat(), timeout=30)
        assert reply.status_code == 503
        assert reply.json()["error"]["type"] == "server_error"
        assert _decision_headers(reply) == {}
    finally:
        stack.stop()


def test_envoy_metrics_listener_serves_prometheus_text_and_nothing_of_the_admin(
    stack: LocalStack,
) -> None:
    metrics = f"http://127.0.0.1:{stack.ports.envoy_metrics}"
    reply = httpx.get(metrics + "/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in reply.text
    assert 'envoy_cluster_name="sim-mid-a"' in reply.text
    # The admin's other endpoints (which can drain or stop Envoy) are not reachable here.
    admin_only = [("POST", "/quitquitquit"), ("POST", "/healthcheck/fail"), ("GET", "/clusters")]
    for method, path in [*admin_only, ("POST", "/metrics"), ("GET", "/stats")]:
        assert httpx.request(method, metrics + path, timeout=10).status_code == 404, path
    ready = httpx.get(metrics + "/ready", timeout=10)  # what the production pod's probes read
    assert (ready.status_code, ready.text.strip()) == (200, "LIVE")

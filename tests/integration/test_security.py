"""Security checks through the real Envoy: what a client can set, what the sidecar lets out."""

from __future__ import annotations

import httpx
import pytest

from sidecar.devstack.stack import LocalStack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
FAKE_KEY = "sk-proj-FAKE-0123456789abcdef-never-logged"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


def _recorded_headers(stack: LocalStack, cluster: str, decision_id: str) -> dict[str, str]:
    port = stack.ports.providers[cluster]
    recorded = httpx.get(f"http://127.0.0.1:{port}/sim/requests", timeout=5).json()
    requests = recorded["requests"] if isinstance(recorded, dict) else recorded
    for request in reversed(requests):
        headers = request.get("headers", {})
        if headers.get("x-router-decision-id") == decision_id:
            return {str(k): str(v) for k, v in headers.items()}
    raise AssertionError(f"{cluster} never saw decision {decision_id}")


@pytest.mark.parametrize(
    "spoofed",
    [
        {"X-Router-Upstream": "sim-frontier", "X-ROUTER-ROUTE": "frontier"},
        {"x-router-decision-id": "forged", "X-Router-Model": "gpt-4o"},
        # Envoy's own control headers: honoured, a 1 ms timeout would make this a 504.
        {"X-Envoy-Upstream-Rq-Timeout-Ms": "1", "x-envoy-max-retries": "50"},
        {"x-envoy-upstream-rq-per-try-timeout-ms": "1", "X-Envoy-Retry-On": "5xx"},
    ],
    ids=["router-upstream", "router-ids", "envoy-timeout", "envoy-per-try-timeout"],
)
def test_client_headers_in_any_case_never_choose_the_upstream_or_limits(
    stack: LocalStack, spoofed: dict[str, str]
) -> None:
    reply = httpx.post(stack.base_url + CHAT, json=BODY, headers=spoofed, timeout=30)
    assert reply.status_code == 200, reply.text  # no limit the client set was applied
    upstream = reply.headers["x-router-upstream"]
    assert upstream != "sim-frontier"  # "hi" is never a frontier prompt
    assert reply.headers["x-router-decision-id"] != "forged"
    seen = _recorded_headers(stack, upstream, reply.headers["x-router-decision-id"])
    for name, value in spoofed.items():
        assert seen.get(name.lower()) != value, f"{name} reached the provider"


def test_a_client_api_key_never_reaches_the_sidecars_logs_metrics_or_errors(
    stack: LocalStack,
) -> None:
    auth = {"authorization": f"Bearer {FAKE_KEY}", "api-key": FAKE_KEY}
    good = httpx.post(stack.base_url + CHAT, json=BODY, headers=auth, timeout=30)
    bad = httpx.post(
        stack.base_url + CHAT, content=b"{not json", headers={**auth, "x-router-policy": "warp"}
    )
    unknown = httpx.post(
        stack.base_url + CHAT, json={**BODY, "model": "nope"}, headers=auth, timeout=30
    )
    assert good.status_code == 200 and bad.status_code == 400 and unknown.status_code == 404
    for reply in (bad, unknown):
        assert FAKE_KEY not in reply.text and FAKE_KEY not in str(reply.headers)
    metrics = httpx.get(f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics", timeout=5)
    assert FAKE_KEY not in metrics.text
    assert FAKE_KEY not in stack.log_tails(lines=1_000_000)

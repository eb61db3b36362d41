"""Per-request limits through the real Envoy: honoured, or refused with a JSON 400.

With `max_tokens: 4` and a one-token prompt the static prices give these expected costs:
sim-small $0.00000045, sim-mid-a $0.00000375, sim-mid-b $0.0000044, sim-frontier
$0.0000425. So a max cost of $0.000001 leaves only sim-small, and $0.0000000001 nothing.
"""

from __future__ import annotations

import httpx
import pytest

from sidecar.devstack.stack import LocalStack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
MAX_COST = "x-router-max-cost-usd"
MAX_LATENCY = "x-router-max-latency-ms"


def _post(stack: LocalStack, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(stack.base_url + CHAT, json=BODY, headers=headers, timeout=30)


def _requests_seen(stack: LocalStack) -> int:
    total = 0
    for port in stack.ports.providers.values():
        reply = httpx.get(f"http://127.0.0.1:{port}/sim/requests", timeout=5)
        total += len(reply.json()["requests"])
    return total


def test_a_tiny_max_cost_is_served_by_the_only_provider_within_it(stack: LocalStack) -> None:
    unlimited = _post(stack, {})
    assert unlimited.status_code == 200 and unlimited.headers["x-router-upstream"] == "sim-mid-a"
    limited = _post(stack, {MAX_COST: "0.000001"})
    assert limited.status_code == 200, limited.text
    # Envoy passed the header to the sidecar (it is not internal-only) and the answer came
    # from the provider the sidecar chose.
    assert limited.headers["x-router-upstream"] == "sim-small"
    assert limited.headers["x-sim-name"] == "sim-small"
    # Like x-router-policy, the limits go on to the provider: nothing secret in them.
    seen = httpx.get(
        f"http://127.0.0.1:{stack.ports.providers['sim-small']}/sim/requests", timeout=5
    ).json()["requests"]
    mine = [r for r in seen if r["headers"].get("x-router-decision-id") == (
        limited.headers["x-router-decision-id"]
    )]  # fmt: skip
    assert mine and mine[0]["headers"][MAX_COST] == "0.000001"


def test_an_impossible_limit_is_a_json_400_and_reaches_no_provider(stack: LocalStack) -> None:
    before = _requests_seen(stack)
    refused = _post(stack, {MAX_COST: "0.0000000001", MAX_LATENCY: "60000"})
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/json"
    assert "x-router-upstream" not in refused.headers
    error = refused.json()["error"]
    assert error["code"] == "no_provider_within_limits"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "no provider can serve this request within max cost $0.0000000001 and max latency 60 s:"
        " the cheapest and fastest, sim-small, is expected to cost $0.00000045 and take"
    )
    assert _requests_seen(stack) == before


def test_a_malformed_limit_is_a_json_400_naming_the_header(stack: LocalStack) -> None:
    refused = _post(stack, {MAX_LATENCY: "soon"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_limit" and error["param"] == MAX_LATENCY

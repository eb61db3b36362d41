"""Passive signals through the real Envoy: a provider answering 429 is avoided, then used again.

sim-mid-a (the cheaper) and sim-mid-b serve the same model. sim-mid-a is told to answer
every completion with 429 and `retry-after: 3`. Envoy's failover aggregate retries each
such request on sim-mid-b, so clients see only 200s, and its router logs every upstream
attempt to the sidecar over gRPC (the 429s included). Within about one log flush the
sidecar stops choosing sim-mid-a; about 3 s later it chooses it again, and sim-mid-a
(recovered meanwhile) serves. Envoy's own ext_proc counter shows one sidecar call per
request all along: the access log adds no round trip to the request path.

Every wait polls with a deadline; the measured times are printed (`pytest -s`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
RETRY_AFTER_S = 3
# Generous bounds for a loaded machine, not the expectation (printed with -s).
REACTION_DEADLINE_S = 5.0
SLACK_S = 2.0


@dataclass(frozen=True)
class Sent:
    """One request through Envoy: when it was sent, where it was decided and served."""

    at: float
    status: int
    decided: str
    served: str


def _envoy_counters(stack: LocalStack, prefix: str) -> dict[str, int]:
    url = f"http://127.0.0.1:{stack.ports.admin}/stats?format=json&filter=^{prefix}"
    stats = httpx.get(url, timeout=5).json()["stats"]
    return {s["name"].removeprefix(prefix): s["value"] for s in stats if "value" in s}


def _control(stack: LocalStack, cluster: str, **behaviour: object) -> None:
    url = f"http://127.0.0.1:{stack.ports.providers[cluster]}/sim/control"
    httpx.put(url, json=behaviour, timeout=5).raise_for_status()


def _send_until(
    client: httpx.Client, sent: list[Sent], done: Callable[[Sent], bool], deadline_s: float
) -> Sent:
    """Send requests one after another until `done` holds for one; returns that one."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        at = time.monotonic()
        reply = client.post(CHAT, json=BODY)
        one = Sent(
            at,
            reply.status_code,
            reply.headers.get("x-router-upstream", "-"),
            reply.headers.get("x-sim-name", "-"),
        )
        sent.append(one)
        if done(one):
            return one
    raise AssertionError(f"not within {deadline_s:.0f}s; last: {sent[-1:]}")


def test_a_provider_answering_429_is_avoided_for_its_retry_after_then_used_again(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path, sidecar_args=("--no-semantic",))
    sent: list[Sent] = []
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            ext_proc = "http.openai_api.ext_proc."
            before = _envoy_counters(stack, ext_proc)
            first = _send_until(client, sent, lambda s: True, 30)
            assert (first.status, first.decided, first.served) == (200, "sim-mid-a", "sim-mid-a")

            _control(stack, "sim-mid-a", fail_status=429, retry_after_s=RETRY_AFTER_S)
            told = time.monotonic()
            moved = _send_until(
                client, sent, lambda s: s.decided != "sim-mid-a", REACTION_DEADLINE_S
            )
            # Recovered at once, but it asked for 3 s: the router keeps away that long.
            _control(stack, "sim-mid-a", fail_status=None, retry_after_s=None)
            back = _send_until(client, sent, lambda s: s.decided == "sim-mid-a", RETRY_AFTER_S + 10)
            after = _envoy_counters(stack, ext_proc)
    finally:
        stack.stop()

    rescued = [s for s in sent if told <= s.at < moved.at]
    avoided = [s for s in sent if moved.at <= s.at < back.at]
    avoided_s = back.at - moved.at
    started = after["streams_started"] - before.get("streams_started", 0)
    print(
        f"\n429 + retry-after {RETRY_AFTER_S}s on sim-mid-a: decisions moved to "
        f"{moved.decided} {moved.at - told:.2f}s after (Envoy's retry rescued "
        f"{len(rescued)} request(s) meanwhile); avoided for {avoided_s:.2f}s "
        f"({len(avoided)} requests to {sorted({s.served for s in avoided})}); then "
        f"{back.decided} served by {back.served}. {len(sent)} requests, ext_proc "
        f"streams_started +{started}"
    )
    assert all(s.status == 200 for s in sent), [s for s in sent if s.status != 200]
    assert all(s.decided == "sim-mid-a" and s.served == "sim-mid-b" for s in rescued)
    assert moved.decided == moved.served == "sim-mid-b"
    assert {(s.decided, s.served) for s in avoided} == {("sim-mid-b", "sim-mid-b")}
    assert RETRY_AFTER_S - 0.5 <= avoided_s <= RETRY_AFTER_S + SLACK_S
    assert (back.status, back.served) == (200, "sim-mid-a")
    # One ext_proc stream per request, none failed open: the log is off the request path.
    assert started == len(sent)
    assert after.get("failure_mode_allowed", 0) == before.get("failure_mode_allowed", 0)

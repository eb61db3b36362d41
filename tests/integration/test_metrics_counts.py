"""After N requests through Envoy, the sidecar's /metrics counts N and its histograms hold N.

Every request Envoy sends to the sidecar is one decision: the decisions counter (summed
over its labels) and the count of each per-decision histogram grow by exactly N, and so
do Envoy's own ext_proc streams. A request Envoy routed without the sidecar (fail-open)
would show as a shortfall.
"""

from __future__ import annotations

import re

import httpx
import pytest

from sidecar.devstack.stack import LocalStack

pytestmark = pytest.mark.integration

N = 20
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
SAMPLE = re.compile(r"(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")
LE = re.compile(r'le="([^"]*)"')
HISTOGRAMS = (
    "inference_router_decision_seconds",
    "inference_router_expected_cost_usd",
    "inference_router_predicted_output_tokens",
)


def totals(exposition: str) -> dict[str, float]:
    """Each sample name's value summed over its labels (buckets kept apart by `le`).

    Names as written (prometheus_client's parser would add `_total` to Envoy's counters).
    """
    summed: dict[str, float] = {}
    for line in exposition.splitlines():
        sample = SAMPLE.match(line)
        if sample is None:
            continue
        le = LE.search(sample["labels"] or "")
        name = sample["name"] if le is None else f"{sample['name']}{{le={le[1]}}}"
        summed[name] = summed.get(name, 0.0) + float(sample["value"])
    return summed


def scrape(stack: LocalStack) -> tuple[dict[str, float], dict[str, float]]:
    """(sidecar /metrics, Envoy /stats/prometheus), summed by name."""
    sidecar = httpx.get(f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics", timeout=5)
    envoy = httpx.get(f"http://127.0.0.1:{stack.ports.admin}/stats/prometheus", timeout=5)
    sidecar.raise_for_status()
    envoy.raise_for_status()
    return totals(sidecar.text), totals(envoy.text)


def test_after_n_requests_the_counts_match_n(stack: LocalStack) -> None:
    sidecar_before, envoy_before = scrape(stack)
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        for _ in range(N):
            reply = client.post("/v1/chat/completions", json=BODY)
            assert reply.status_code == 200, reply.text
    sidecar_after, envoy_after = scrape(stack)

    def grew(after: dict[str, float], before: dict[str, float], name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew(sidecar_after, sidecar_before, "inference_router_decisions_total") == N
    assert grew(envoy_after, envoy_before, "envoy_http_ext_proc_streams_started") == N
    for histogram in HISTOGRAMS:
        assert grew(sidecar_after, sidecar_before, f"{histogram}_count") == N, histogram
        assert grew(sidecar_after, sidecar_before, f"{histogram}_bucket{{le=+Inf}}") == N
        assert grew(sidecar_after, sidecar_before, f"{histogram}_sum") > 0, histogram
        finite = [
            name
            for name in sidecar_after
            if name.startswith(f"{histogram}_bucket{{") and not name.endswith("+Inf}")
        ]
        # Populated: the observations fall in real buckets, not all past the last one.
        assert any(grew(sidecar_after, sidecar_before, name) > 0 for name in finite), histogram

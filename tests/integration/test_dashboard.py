"""Every metric the Grafana dashboard queries is exported by a running stack.

A full local stack (Envoy, the sidecar with its semantic classifier, simulated
providers) serves a few requests, one of them refused, so that the labelled series
exist; then the sidecar's /metrics and Envoy's metrics listener (its /stats/prometheus)
are scraped, and each metric name in each panel's PromQL (`tests/dashboard_queries.py`)
must be among them.
Envoy exports its counters at zero (retries, outlier ejections) before anything happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from tests.dashboard_queries import exported_names, load_dashboard, referenced_names
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
PROMPTS = ("hi", "Prove that there are infinitely many primes.", "Thanks!")


@pytest.fixture(scope="module")
def semantic_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with the semantic classifier on (its queue gauge is on the dashboard)."""
    stack = start_stack(tmp_path_factory.mktemp("dashboard"))
    try:
        yield stack
    finally:
        stack.stop()


def scrape(url: str) -> str:
    """The text exposition at `url`."""
    reply = httpx.get(url, timeout=10)
    reply.raise_for_status()
    return reply.text


def test_every_metric_the_dashboard_queries_is_exported(
    semantic_stack: LocalStack, tmp_path: Path
) -> None:
    stack = semantic_stack
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        for prompt in PROMPTS:
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
            assert client.post(CHAT, json={**body, "max_tokens": 4}).status_code == 200
        assert client.post(CHAT, content=b"{not json").status_code == 400
    sidecar = scrape(f"http://127.0.0.1:{stack.ports.sidecar_admin}/metrics")
    envoy = scrape(f"http://127.0.0.1:{stack.ports.envoy_metrics}/metrics")  # its metrics listener
    exported = exported_names(sidecar) | exported_names(envoy)
    users = referenced_names(load_dashboard())
    missing = {name: sorted(panels) for name, panels in users.items() if name not in exported}
    if missing:  # keep the scrapes to read
        (tmp_path / "sidecar.txt").write_text(sidecar)
        (tmp_path / "envoy.txt").write_text(envoy)
    assert not missing, f"queried but not exported (name: panels): {missing}; scrapes in {tmp_path}"
    # The check is not empty-handed: both sides of the stack are on the dashboard.
    assert any(name.startswith("envoy_") for name in users)
    assert any(name.startswith("inference_router_") for name in users)

"""Big bodies through the real Envoy: several concurrent bodies of 7.5 MiB are all decided.

Envoy's ext_proc message timer starts when it hands a body to the gRPC stream, so it
covers the transfer too, and concurrent bodies share one HTTP/2 connection: 4 x 7.5 MiB
took over 200 ms to arrive on a busy machine. The message timeout (500 ms) leaves room
for that; then the sidecar asks Envoy for its max_message_timeout and decodes off the
event loop, so none of them falls back to the default route.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CONCURRENT = 4


@pytest.fixture(scope="module")
def semantic_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("big-bodies"))
    try:
        yield stack
    finally:
        stack.stop()


def test_concurrent_big_bodies_are_all_decided(semantic_stack: LocalStack) -> None:
    prompt = "please summarise this. " + "word " * 1_500_000  # ~7.5 MiB of JSON
    body = {"model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]}

    def send(_: int) -> httpx.Response:
        return httpx.post(semantic_stack.base_url + "/v1/chat/completions", json=body, timeout=120)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        replies = list(pool.map(send, range(CONCURRENT)))
    assert [r.status_code for r in replies] == [200] * CONCURRENT
    routes = [r.headers["x-router-route"] for r in replies]
    url = f"http://127.0.0.1:{semantic_stack.ports.admin}/stats?filter=ext_proc"
    assert "fallback" not in routes, (routes, httpx.get(url, timeout=5).text)

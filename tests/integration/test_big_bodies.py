"""Big bodies through the real Envoy: several concurrent bodies of 7.5 MiB are all decided.

Decoding such a body takes longer than Envoy's 200 ms ext_proc message timeout once a
few queue up; the sidecar asks Envoy for its max_message_timeout first and decodes off
the event loop, so none of them falls back to the default route.
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
    assert "fallback" not in routes, routes

"""What Envoy does when the sidecar is gone: fail-open to the default cluster, or fail-closed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = {"model": "llama-3.3-70b-instruct", "messages": [{"role": "user", "content": "hi"}]}
SPOOF = {"x-router-upstream": "sim-frontier"}


def test_fail_open_serves_from_default_cluster(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, sidecar_args=("--no-semantic",))
    try:
        routed = httpx.post(stack.base_url + CHAT, json=BODY, headers=SPOOF, timeout=30)
        assert routed.status_code == 200
        stack.stop_process("sidecar")
        for _ in range(3):
            reply = httpx.post(stack.base_url + CHAT, json=BODY, headers=SPOOF, timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-sim-name"] == "sim-mid-a"
            assert reply.headers["x-router-route"] == "fallback"
        # The model list, too, falls back: the default provider's own.
        models = httpx.get(stack.base_url + "/v1/models", timeout=30)
        assert models.status_code == 200 and models.headers["x-sim-name"] == "sim-mid-a"
    finally:
        stack.stop()


def test_fail_closed_gives_a_clear_error(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, fail_open=False, sidecar_args=("--no-semantic",))
    try:
        assert httpx.post(stack.base_url + CHAT, json=BODY, timeout=30).status_code == 200
        stack.stop_process("sidecar")
        reply = httpx.post(stack.base_url + CHAT, json=BODY, headers=SPOOF, timeout=30)
        assert reply.status_code == 503
        error = reply.json()["error"]
        assert error["type"] == "server_error" and error["code"]
    finally:
        stack.stop()

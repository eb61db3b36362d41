"""The live view in a real browser: it loads, shows a running stack's data and keeps up.

A full local stack serves a few requests through Envoy; headless Chromium (Debian's
`chromium`, which `make test` installs; Playwright drives it and never downloads a
browser of its own) opens the sidecar's admin page. The page must show a provider row
and the rows of the decisions just made, found by the decision ids Envoy's replies
carry; then one more request must appear without the page being reloaded (a mark set
on the page's `window` survives). Every wait is Playwright's bounded wait for a selector.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on PATH: `make test` installs Debian's package with apt-get",
    ),
]

CHAT = "/v1/chat/completions"
WAIT_MS = 15_000  # the page polls every second; a start-up of Chromium fits well within


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with the semantic classifier on, so decisions carry semantic routes."""
    stack = start_stack(tmp_path_factory.mktemp("live-view"))
    try:
        yield stack
    finally:
        stack.stop()


def _send(stack: LocalStack, prompt: str) -> tuple[str, str]:
    """One chat request through Envoy; its decision id and route from the reply."""
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
    reply = httpx.post(stack.base_url + CHAT, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers["x-router-decision-id"], reply.headers["x-router-route"]


def _decision_route(page: Page, decision_id: str) -> str:
    """The route the page shows for a decision, once its row is there."""
    row = page.wait_for_selector(f'#decisions tr[data-decision-id="{decision_id}"]')
    assert row is not None
    cells = [cell.inner_text() for cell in row.query_selector_all("td")]
    return cells[1]  # time, route, upstream, ...


def test_the_live_view_shows_the_stack_and_updates_without_reload(
    live_stack: LocalStack, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    sent = [_send(live_stack, prompt) for prompt in ("hi", "Prove that √2 is irrational.")]
    url = f"http://127.0.0.1:{live_stack.ports.sidecar_admin}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            provider = page.wait_for_selector('#providers tr[data-cluster="sim-mid-a"]')
            assert provider is not None
            assert "llama-3.3-70b-instruct" in provider.inner_text()
            for decision_id, route in sent:
                assert _decision_route(page, decision_id) == route
            assert "Prove" not in page.content()  # the prompt is never shown
            page.evaluate("window.notReloaded = true")
            decision_id, route = _send(live_stack, "Thanks!")
            assert _decision_route(page, decision_id) == route
            assert page.evaluate("window.notReloaded === true")
            total = "document.getElementById('mix-total').textContent === '(3 since start)'"
            page.wait_for_function(total)
            page.screenshot(path=str(tmp_path / "live-view.png"), full_page=True)
        finally:
            browser.close()

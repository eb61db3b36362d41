"""The live view: /live.json's shape, its bounded decision log, no prompt, loopback only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.config.settings import Settings
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import (
    CandidateCost,
    Decision,
    ProviderSnapshot,
    ProviderState,
)
from sidecar.core.policy import Policy
from sidecar.devstack.extproc_client import chat_request, decision_headers, exchange
from sidecar.serving.live_view import (
    LIVE_JSON_PATH,
    LIVE_PAGE_PATH,
    DecisionLog,
    LiveView,
    provider_rows,
)
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.server import start_sidecar

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.2), metrics_url="http://t/metrics"),
        Provider("big", "big-1t", "frontier", Price(5, 15)),
    ),
    clusters=frozenset({"tiny", "big"}),
)
PROMPT = "my very private prompt 7f3a"


def _decision(n: int, route: str = "small", upstream: str = "tiny") -> Decision:
    candidate = CandidateCost(upstream, "tiny-1b", "small", 2e-5, 0.4, Price(0.1, 0.2), True)
    return Decision(
        decision_id=f"d{n}",
        upstream=upstream,
        route=route,
        tier="small",
        policy=Policy.BALANCED,
        model="tiny-1b",
        model_rewritten=True,
        reason=f"default route {route}; the cheapest, {upstream}",
        predicted_output_tokens=64.0,
        candidates=(candidate,),
    )


class Ages:
    """A board's reading ages."""

    def __init__(self, ages: list[tuple[str, str, float]]) -> None:
        self.ages = ages

    def reading_ages(self) -> list[tuple[str, str, float]]:
        return self.ages


def test_the_log_keeps_the_latest_decisions_newest_first_and_counts_all() -> None:
    log = DecisionLog(size=3, clock=lambda: 1700000000.0)
    for n in range(5):
        log.record(_decision(n, route="frontier" if n == 4 else "small"), "unused")
    assert [r.decision_id for r in log.recent()] == ["d4", "d3", "d2"]
    assert [(m.route, m.upstream, m.count) for m in log.mix()] == [
        ("small", "tiny", 4),
        ("frontier", "tiny", 1),
    ]
    newest = log.recent()[0]
    assert (newest.at, newest.classifier, newest.expected_cost_usd) == (
        1700000000.0,
        "unused",
        2e-5,
    )


def test_a_log_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DecisionLog(size=0)


def test_metrics_hand_each_decision_to_their_listeners() -> None:
    metrics, log = RouterMetrics(), DecisionLog()
    metrics.on_decided(log.record)
    metrics.decided(_decision(1), "routed", 0.001)
    assert [(r.decision_id, r.classifier) for r in log.recent()] == [("d1", "routed")]


def test_provider_rows_say_where_the_price_came_from_and_how_old_each_reading_is() -> None:
    snapshot = ProviderSnapshot(
        states={
            "tiny": ProviderState(
                healthy=False, queue_waiting=3.0, price=Price(0.3, 0.4), notes=("429 seen",)
            )
        }
    )
    tiny, big = provider_rows(CATALOGUE, snapshot, [("load", "tiny", 1.5), ("price", "tiny", 9)])
    assert (tiny.healthy, tiny.queue_waiting, tiny.price_source) == (False, 3.0, "feed")
    assert (tiny.price_input_per_mtok, tiny.price_output_per_mtok) == (0.3, 0.4)
    assert (tiny.load_age_s, tiny.price_age_s, tiny.notes) == (1.5, 9, ("429 seen",))
    assert (big.healthy, big.queue_waiting, big.price_source) == (True, None, "static")
    assert (big.price_output_per_mtok, big.load_age_s, big.price_age_s) == (15, None, None)


def _view(log: DecisionLog) -> LiveView:
    return LiveView(
        CATALOGUE, ProviderSnapshot, Ages([("load", "tiny", 2.0)]), log, clock=lambda: 42.0
    )


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    log = DecisionLog()
    log.record(_decision(1), "stage1_routed")
    app = web.Application()
    app.add_routes(_view(log).routes())
    started = TestClient(TestServer(app, host="127.0.0.1"))
    await started.start_server()
    yield started
    await started.close()


async def test_live_json_has_providers_the_mix_and_the_decisions(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get(LIVE_JSON_PATH)
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "no-store"
    state = await reply.json()
    assert set(state) == {"now", "providers", "mix", "decisions"}
    assert state["now"] == 42.0
    assert [p["cluster"] for p in state["providers"]] == ["tiny", "big"]
    assert state["providers"][0]["load_age_s"] == 2.0
    assert state["mix"] == {
        "total": 1,
        "rows": [{"route": "small", "upstream": "tiny", "count": 1}],
    }
    (decision,) = state["decisions"]
    assert decision["decision_id"] == "d1"
    assert decision["classifier"] == "stage1_routed"
    assert set(decision) == {
        "at", "decision_id", "route", "upstream", "model", "tier", "policy", "classifier",
        "expected_cost_usd", "expected_latency_s", "reason",
    }  # fmt: skip


async def test_the_page_is_one_self_contained_html_file(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get(LIVE_PAGE_PATH)
    assert reply.status == 200
    assert reply.content_type == "text/html"
    page = await reply.text()
    assert "live.json" in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page  # textContent only
    assert "http://" not in page and "https://" not in page  # nothing from the internet


@pytest.mark.parametrize("remote", ["203.0.113.7", "10.0.0.3", "2001:db8::1"])
async def test_live_json_answers_loopback_callers_only(remote: str) -> None:
    request = make_mocked_request("GET", LIVE_JSON_PATH).clone(remote=remote)
    route = _view(DecisionLog()).routes()[1]
    assert route.path == LIVE_JSON_PATH
    reply = await route.handler(request)
    assert isinstance(reply, web.Response)
    assert reply.status == 403
    assert isinstance(reply.body, bytes)
    assert json.loads(reply.body)["error"]["code"] == "forbidden"


async def test_a_running_sidecar_shows_a_decision_of_its_ext_proc_without_the_prompt() -> None:
    settings = Settings.model_validate(
        {
            "envoy_config": ROOT / "envoy" / "local.yaml",
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "semantic": {"enabled": False},
        }
    )
    sidecar = await start_sidecar(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            stub = ext_grpc.ExternalProcessorStub(channel)
            replies = await exchange(stub, chat_request(PROMPT, headers={"x-api-key": "sk-9"}))
        sent = decision_headers(replies[-1])
        url = f"http://127.0.0.1:{sidecar.admin_port}{LIVE_JSON_PATH}"
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            assert reply.status == 200
            text = await reply.text()
    finally:
        await sidecar.stop(grace_s=1)
    state = json.loads(text)
    assert "sim-mid-a" in [p["cluster"] for p in state["providers"]]
    (decision,) = state["decisions"]
    assert decision["decision_id"] == sent["x-router-decision-id"]
    assert decision["upstream"] == sent["x-router-upstream"]
    assert state["mix"]["total"] == 1
    assert "private prompt" not in text
    assert "sk-9" not in text

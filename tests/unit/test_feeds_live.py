"""The live board: fresh facts are used, stale ones fall back, every choice is explained."""

from __future__ import annotations

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, ProviderState, RoutingTable, decide
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.feeds.engines import LoadSample
from sidecar.feeds.live import LiveBoard, LoadReading, PriceReading, merge

CATALOGUE = Catalogue(
    providers=(
        Provider("a", "llama", "mid", Price(0.59, 0.79), metrics_url="http://a/metrics",
                 ttft_s=0.15, tokens_per_s=120, max_concurrency=8),
        Provider("b", "llama", "mid", Price(0.88, 0.88), metrics_url="http://b/metrics",
                 ttft_s=0.09, tokens_per_s=200, max_concurrency=8),
        Provider("hosted", "gpt", "frontier", Price(2.5, 10.0)),
    ),
    clusters=frozenset({"a", "b", "hosted"}),
)  # fmt: skip
IDLE = LoadSample(waiting=0.0, running=0.0, kv_usage=0.0)


def _load(waiting: float, at: float) -> LoadReading:
    return LoadReading(LoadSample(waiting, 8.0, 0.9), at)


def test_fresh_queues_are_used_and_said() -> None:
    snapshot = merge(10.0, CATALOGUE, ProviderSnapshot(), {"a": _load(30, 9.6)}, None, 5.0)
    a = snapshot.state("a")
    assert a.queue_waiting == 30 and a.notes == ("30 waiting (0.4 s old)",)
    # b has a metrics endpoint but no reading: conservatively one full batch waiting.
    assert snapshot.state("b").queue_waiting == 8
    assert "never read" in snapshot.state("b").notes[0]
    # A hosted API without metrics is neutral: no queue fact at all.
    assert snapshot.state("hosted") == ProviderState()


def test_a_stale_queue_is_assumed_full_and_a_stale_price_falls_back() -> None:
    prices = PriceReading({"a": Price(0.1, 0.1)}, "price feed", taken_at=0.0)
    snapshot = merge(20.0, CATALOGUE, ProviderSnapshot(), {"a": _load(0, 1.0)}, prices, 5.0)
    a = snapshot.state("a")
    assert a.queue_waiting == 8 and "19 s old" in a.notes[0]
    assert a.price is None and "price feed stale (20 s): static price" in a.notes
    fresh = merge(3.0, CATALOGUE, ProviderSnapshot(), {}, prices, 5.0).state("a")
    assert fresh.price == Price(0.1, 0.1) and "price from price feed (3 s old)" in fresh.notes


def test_envoys_health_view_is_kept() -> None:
    health = ProviderSnapshot({"b": ProviderState(healthy=False)})
    snapshot = merge(1.0, CATALOGUE, health, {"b": _load(0, 1.0)}, None, 5.0)
    assert not snapshot.state("b").healthy and "unhealthy in Envoy" in snapshot.state("b").notes


def _choice(snapshot: ProviderSnapshot) -> str:
    facts = RequestFacts(Endpoint.CHAT, "llama", "hi", 10, None, False)
    table = RoutingTable(tiers=("mid", "frontier"), default_route="mid")
    decision = decide(
        facts, Intent(Policy.BALANCED, "llama"), decision_id="d", table=table,
        catalogue=CATALOGUE, snapshot=snapshot,
    )  # fmt: skip
    return decision.upstream


def test_a_deep_queue_on_the_cheapest_moves_balanced_traffic_and_back() -> None:
    now = [100.0]
    board = LiveBoard(CATALOGUE, max_age_s=5.0, clock=lambda: now[0])
    board.record_load("a", IDLE)
    board.record_load("b", IDLE)
    assert _choice(board.snapshot()) == "a"  # idle: the cheaper one
    board.record_load("a", LoadSample(30.0, 8.0, 1.0))
    assert _choice(board.snapshot()) == "b"  # 30 waiting: ~8.6 s more to wait
    board.record_load("a", IDLE)
    assert _choice(board.snapshot()) == "a"

"""The sidecar's /metrics: per-decision series, process_*, and state read at scrape time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import (
    CandidateCost,
    Decision,
    ProviderSnapshot,
    ProviderState,
)
from sidecar.core.policy import Policy
from sidecar.feeds.engines import LoadSample
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.price_feed import PriceFeed
from sidecar.serving.metrics import RouterMetrics

CATALOGUE = Catalogue(
    providers=(
        Provider("cheap", "llama", "mid", Price(0.5, 1.0), metrics_url="http://cheap/metrics"),
        Provider("dear", "llama", "mid", Price(2.0, 4.0)),
    ),
    clusters=frozenset({"cheap", "dear"}),
)


def _candidate(cluster: str, cost: float) -> CandidateCost:
    return CandidateCost(cluster, "llama", "mid", cost, 1.0, Price(1, 1), healthy=True)


def _decision(upstream: str, tokens: float) -> Decision:
    return Decision(
        decision_id="d",
        upstream=upstream,
        route="mid",
        tier="mid",
        policy=Policy.COST,
        model="llama",
        model_rewritten=False,
        reason="test",
        predicted_output_tokens=tokens,
        candidates=(_candidate("cheap", 0.001), _candidate("dear", 0.004)),
    )


def _value(metrics: RouterMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_decision_records_its_chosen_cost_and_predicted_length() -> None:
    metrics = RouterMetrics()
    metrics.decided(_decision("cheap", 100), "unused", 0.003)
    metrics.decided(_decision("dear", 300), "shed", 0.001)
    decisions = {"route": "mid", "policy": "cost"}
    assert _value(metrics, "inference_router_decisions_total", upstream="cheap",
                  classifier="unused", **decisions) == 1  # fmt: skip
    assert _value(metrics, "inference_router_decisions_total", upstream="dear",
                  classifier="shed", **decisions) == 1  # fmt: skip
    for histogram in ("decision_seconds", "expected_cost_usd", "predicted_output_tokens"):
        assert _value(metrics, f"inference_router_{histogram}_count") == 2
    assert _value(metrics, "inference_router_expected_cost_usd_sum") == 0.005  # 0.001 + 0.004
    assert _value(metrics, "inference_router_expected_cost_usd_bucket", le="0.001") == 1
    assert _value(metrics, "inference_router_predicted_output_tokens_sum") == 400
    assert _value(metrics, "inference_router_predicted_output_tokens_bucket", le="128.0") == 1


def test_repeated_labels_count_on_the_same_series() -> None:
    # The labelled children are kept between decisions; each series must still count all.
    metrics = RouterMetrics()
    for _ in range(3):
        metrics.decided(_decision("cheap", 100), "unused", 0.003)
    metrics.decided(_decision("cheap", 100), "shed", 0.003)
    for seconds in (0.001, 0.002):
        metrics.stage_seconds("parse", seconds)
    metrics.stage_seconds("policy", 0.004)
    decisions = {"upstream": "cheap", "route": "mid", "policy": "cost"}
    assert _value(metrics, "inference_router_decisions_total", classifier="unused",
                  **decisions) == 3  # fmt: skip
    assert _value(metrics, "inference_router_decisions_total", classifier="shed",
                  **decisions) == 1  # fmt: skip
    stages = "inference_router_decision_stage_seconds"
    assert _value(metrics, f"{stages}_count", stage="parse") == 2
    assert _value(metrics, f"{stages}_sum", stage="parse") == 0.003
    assert _value(metrics, f"{stages}_count", stage="policy") == 1


def test_process_and_python_metrics_are_exported_by_every_instance() -> None:
    first, second = RouterMetrics(), RouterMetrics()  # the standard collectors in both
    for metrics in (first, second):
        assert (_value(metrics, "process_cpu_seconds_total") or 0) > 0
        assert (_value(metrics, "process_resident_memory_bytes") or 0) > 0
        assert b"python_info{" in metrics.exposition()


def test_providers_health_queue_and_price_are_read_at_scrape_time() -> None:
    states: dict[str, ProviderState] = {}
    metrics = RouterMetrics()
    metrics.watch_providers(CATALOGUE, lambda: ProviderSnapshot(states=dict(states)))
    assert _value(metrics, "inference_router_provider_healthy", provider="dear") == 1
    assert _value(metrics, "inference_router_provider_queue_waiting", provider="dear") is None
    assert _value(metrics, "inference_router_provider_price_usd_per_mtok", provider="dear",
                  direction="output") == 4.0  # fmt: skip
    states["dear"] = ProviderState(healthy=False, queue_waiting=7.0, price=Price(1.5, 3.5))
    assert _value(metrics, "inference_router_provider_healthy", provider="dear") == 0
    assert _value(metrics, "inference_router_provider_queue_waiting", provider="dear") == 7
    assert _value(metrics, "inference_router_provider_price_usd_per_mtok", provider="dear",
                  direction="output") == 3.5  # fmt: skip
    assert _value(metrics, "inference_router_provider_healthy", provider="cheap") == 1


@dataclass
class FakeFeed:
    """A feed's read counts, as a `Poller` keeps them."""

    name: str
    reads: int = 0
    read_errors: int = 0
    last_read_at: float | None = None


@dataclass
class FakeAccessLog:
    """The access-log receiver's counts."""

    entries: int = 0
    skipped: int = 0


def test_feed_ages_and_read_counts_are_read_at_scrape_time() -> None:
    now = [100.0]
    board = LiveBoard(CATALOGUE, max_age_s=5.0, clock=lambda: now[0])
    feed, silent = FakeFeed("load-scraper"), FakeFeed("price-feed")
    access_log = FakeAccessLog()
    metrics = RouterMetrics(clock=lambda: now[0])
    metrics.watch_feeds(board, [feed, silent], access_log)
    assert (
        _value(metrics, "inference_router_feed_age_seconds", feed="load", provider="cheap") is None
    )
    board.record_load("cheap", LoadSample(3.0, 1.0, None), age_s=1.5)
    board.record_prices({"dear": Price(1, 1)}, "price feed")
    feed.reads, feed.read_errors, feed.last_read_at = 4, 2, 98.0
    access_log.entries, access_log.skipped = 9, 1
    now[0] = 102.0
    assert (
        _value(metrics, "inference_router_feed_age_seconds", feed="load", provider="cheap") == 3.5
    )
    assert _value(metrics, "inference_router_feed_age_seconds", feed="price", provider="dear") == 2
    assert _value(metrics, "inference_router_feed_last_read_age_seconds", feed="load-scraper") == 4
    assert _value(metrics, "inference_router_feed_last_read_age_seconds", feed="price-feed") is None
    assert _value(metrics, "inference_router_feed_reads_total", feed="load-scraper") == 4
    assert _value(metrics, "inference_router_feed_read_errors_total", feed="load-scraper") == 2
    assert _value(metrics, "inference_router_feed_read_errors_total", feed="price-feed") == 0
    assert _value(metrics, "inference_router_access_log_entries_total") == 9
    assert _value(metrics, "inference_router_access_log_skipped_total") == 1


async def test_a_feed_counts_its_good_and_failed_reads(tmp_path: Path) -> None:
    board = LiveBoard(CATALOGUE, max_age_s=5.0)
    table = tmp_path / "prices.json"
    feed = PriceFeed(board, CATALOGUE, str(table), interval_s=30, timeout_s=5)
    await feed.tick()  # no file yet
    assert (feed.reads, feed.read_errors, feed.last_read_at) == (0, 1, None)
    table.write_text('{"dear": {"input": 1, "output": 2}}')
    await feed.tick()
    assert (feed.reads, feed.read_errors) == (1, 1)
    assert feed.last_read_at is not None
    assert feed.name == "price-feed"

"""Prometheus metrics for decisions, exposed on the admin port.

Each sidecar process owns one `RouterMetrics` with its own registry (no module-level
globals), so tests can build as many as they like. The registry also holds the standard
process_*, python_info and python_gc_* collectors.

What is counted on the request path is updated there (decisions, their latency, expected
cost and predicted length, rejections, errors). What describes state (the age of each
feed's readings, each feed's read counts, the access-log receiver's counts, each
provider's health, queue and price) is read when /metrics is scraped, by collectors over
the live objects, so no feed tick pays for a metric and nothing can drift out of date.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import Decision, ProviderSnapshot

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)
# US dollars per request: a short chat on a small model is ~1e-5, a long frontier answer ~0.1.
_COST_BUCKETS = (1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class FeedReads(Protocol):
    """What a feed tells the metrics about its reads (`sidecar.feeds.poller.Poller`)."""

    @property
    def name(self) -> str: ...
    @property
    def reads(self) -> int: ...
    @property
    def read_errors(self) -> int: ...
    @property
    def last_read_at(self) -> float | None: ...


class ReadingAges(Protocol):
    """The live board's ages of its latest readings (`sidecar.feeds.live.LiveBoard`)."""

    def reading_ages(self) -> list[tuple[str, str, float]]: ...


class LogCounts(Protocol):
    """The access-log receiver's counts (`sidecar.feeds.access_log.AccessLogReceiver`)."""

    @property
    def entries(self) -> int: ...
    @property
    def skipped(self) -> int: ...


class RouterMetrics:
    """Counters and histograms of routing decisions."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        # The process_*, python_info and python_gc_* metrics the default registry has.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self._decisions = Counter(
            "inference_router_decisions",
            "Routing decisions made",
            ["upstream", "route", "policy", "classifier"],
            registry=self.registry,
        )
        self._rejections = Counter(
            "inference_router_rejected_requests",
            "Requests answered with an error by the router",
            ["code"],
            registry=self.registry,
        )
        self._errors = Counter(
            "inference_router_errors",
            "Unexpected errors on the request path, by where they happened",
            ["kind"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "inference_router_decision_seconds",
            "Time from receiving the body to answering Envoy",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._cost = Histogram(
            "inference_router_expected_cost_usd",
            "Expected cost of each decision's chosen provider, US dollars",
            buckets=_COST_BUCKETS,
            registry=self.registry,
        )
        self._output_tokens = Histogram(
            "inference_router_predicted_output_tokens",
            "Output tokens predicted for each decided request",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._stages = Histogram(
            "inference_router_decision_stage_seconds",
            "Time spent in each stage of a decision (embed includes the wait for the model)",
            ["stage"],
            buckets=(0.00005, 0.0001, *_LATENCY_BUCKETS),
            registry=self.registry,
        )
        self._cascade = Counter(
            "inference_router_cascade",
            "Held-back answers by what the cascade did (accepted, escalated, escalation_failed, "
            "budget_spent, skipped_full, ticket_refused, expired, unknown, error)",
            ["outcome"],
            registry=self.registry,
        )
        self._cascade_check = Histogram(
            "inference_router_cascade_check_seconds",
            "Time to judge a held-back answer (the evaluator, and the encoder if it reads "
            "an embedding), not counting an escalation's own call",
            buckets=(0.00005, 0.0001, *_LATENCY_BUCKETS),
            registry=self.registry,
        )
        self._listeners: list[Callable[[Decision, str], None]] = []
        # `.labels()` costs ~2 µs a call (it validates and locks); the children are kept
        # here by their labels, which the registry keeps for good anyway.
        self._decision_children: dict[tuple[str, str, str, str], Counter] = {}
        self._stage_children: dict[str, Histogram] = {}

    def on_decided(self, listener: Callable[[Decision, str], None]) -> None:
        """Also hand each recorded decision and its classifier outcome to `listener`."""
        self._listeners.append(listener)

    def decided(self, decision: Decision, classifier: str, seconds: float) -> None:
        """Record one decision, what the classifier did for it, and how long it took."""
        for listener in self._listeners:
            listener(decision, classifier)
        key = (decision.upstream, decision.route, decision.policy.value, classifier)
        counter = self._decision_children.get(key)
        if counter is None:
            counter = self._decision_children[key] = self._decisions.labels(*key)
        counter.inc()
        self._latency.observe(seconds)
        self._output_tokens.observe(decision.predicted_output_tokens)
        for candidate in decision.candidates:
            if candidate.cluster == decision.upstream:
                self._cost.observe(candidate.expected_cost_usd)
                break

    def rejected(self, code: str) -> None:
        """Record a request refused with an error."""
        self._rejections.labels(code).inc()

    def error(self, kind: str) -> None:
        """Record an unexpected error (a bug or a broken dependency), by where it happened."""
        self._errors.labels(kind).inc()

    def cascade_outcome(self, outcome: str) -> None:
        """Record what the cascade did with one request or answer."""
        self._cascade.labels(outcome).inc()

    def cascade_check_seconds(self, seconds: float) -> None:
        """Record how long judging one held-back answer took."""
        self._cascade_check.observe(seconds)

    def stage_seconds(self, stage: str, seconds: float) -> None:
        """Record how long one stage of a decision took (parse, stage1, embed, search, policy)."""
        histogram = self._stage_children.get(stage)
        if histogram is None:
            histogram = self._stage_children[stage] = self._stages.labels(stage)
        histogram.observe(seconds)

    def watch_streams(self, open_streams: Callable[[], int]) -> None:
        """Export how many decision streams are open (the saturation shedding signal)."""
        gauge = Gauge(
            "inference_router_open_streams",
            "ext_proc decision streams open now; above semantic.encoder_max_streams the "
            "sidecar is saturated and stage 1 decides alone",
            registry=self.registry,
        )
        gauge.set_function(open_streams)

    def watch_classifier(self, expected_wait_s: Callable[[], float]) -> None:
        """Export how long a new prompt would wait for the model (the shedding signal)."""
        gauge = Gauge(
            "inference_router_classifier_expected_wait_seconds",
            "How long a new prompt would wait for the embedding model; above the shedding "
            "budget (semantic.max_queue_ms) stage 1 decides alone (or, without stage 1, "
            "the policy's default route)",
            registry=self.registry,
        )
        gauge.set_function(expected_wait_s)

    def watch_providers(
        self, catalogue: Catalogue, snapshot: Callable[[], ProviderSnapshot]
    ) -> None:
        """Export each provider's health, queue and price as the decisions see them."""
        self.registry.register(_ProviderCollector(catalogue, snapshot))

    def watch_feeds(
        self,
        board: ReadingAges,
        feeds: Sequence[FeedReads],
        access_log: LogCounts | None = None,
    ) -> None:
        """Export the age of each feed's readings, its read counts and the access log's."""
        self.registry.register(_FeedCollector(board, tuple(feeds), access_log, self._clock))

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _ProviderCollector(Collector):
    """Each provider's live state, read from the board at scrape time."""

    def __init__(self, catalogue: Catalogue, snapshot: Callable[[], ProviderSnapshot]) -> None:
        self._catalogue = catalogue
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        """One sample per provider (queue: only where one is known)."""
        healthy = GaugeMetricFamily(
            "inference_router_provider_healthy",
            "1 while the router may choose the provider; 0 while it avoids it (Envoy sees "
            "it down, a controller took it out, or its traffic said 429 or kept failing)",
            labels=["provider"],
        )
        queue = GaugeMetricFamily(
            "inference_router_provider_queue_waiting",
            "Requests waiting at the provider as the router counts them (a stale reading "
            "counts as one full batch)",
            labels=["provider"],
        )
        price = GaugeMetricFamily(
            "inference_router_provider_price_usd_per_mtok",
            "The price the router decides by, US dollars per million tokens (live or static)",
            labels=["provider", "direction"],
        )
        snapshot = self._snapshot()
        for provider in self._catalogue.providers:
            state = snapshot.state(provider.cluster)
            healthy.add_metric([provider.cluster], 1.0 if state.healthy else 0.0)
            if state.queue_waiting is not None:
                queue.add_metric([provider.cluster], state.queue_waiting)
            used = state.price or provider.price
            price.add_metric([provider.cluster, "input"], used.input_per_mtok)
            price.add_metric([provider.cluster, "output"], used.output_per_mtok)
        return [healthy, queue, price]


class _FeedCollector(Collector):
    """The feeds' ages and read counts, read from the feeds at scrape time."""

    def __init__(
        self,
        board: ReadingAges,
        feeds: tuple[FeedReads, ...],
        access_log: LogCounts | None,
        clock: Callable[[], float],
    ) -> None:
        self._board = board
        self._feeds = feeds
        self._access_log = access_log
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        """Ages per feed and provider, read counts per feed, the access log's counts."""
        ages = GaugeMetricFamily(
            "inference_router_feed_age_seconds",
            "Seconds since the reading the router holds of a provider was taken, by feed "
            "(load, price); past the feed's max_age_s it is no longer trusted",
            labels=["feed", "provider"],
        )
        for kind, cluster, age in self._board.reading_ages():
            ages.add_metric([kind, cluster], age)
        last = GaugeMetricFamily(
            "inference_router_feed_last_read_age_seconds",
            "Seconds since the feed last read its source successfully (absent: never)",
            labels=["feed"],
        )
        reads = CounterMetricFamily(
            "inference_router_feed_reads", "Successful reads of a feed's source", labels=["feed"]
        )
        errors = CounterMetricFamily(
            "inference_router_feed_read_errors",
            "Failed reads of a feed's source (the direct scrape: one per provider that failed)",
            labels=["feed"],
        )
        now = self._clock()
        for feed in self._feeds:
            reads.add_metric([feed.name], feed.reads)
            errors.add_metric([feed.name], feed.read_errors)
            if feed.last_read_at is not None:
                last.add_metric([feed.name], now - feed.last_read_at)
        families: list[Metric] = [ages, last, reads, errors]
        if self._access_log is not None:
            entries = CounterMetricFamily(
                "inference_router_access_log_entries",
                "Upstream attempts learned from Envoy's access log",
            )
            entries.add_metric([], self._access_log.entries)
            skipped = CounterMetricFamily(
                "inference_router_access_log_skipped",
                "Access-log entries that were not upstream attempts or could not be read",
            )
            skipped.add_metric([], self._access_log.skipped)
            families += [entries, skipped]
        return families

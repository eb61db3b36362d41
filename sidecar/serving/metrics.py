"""Prometheus metrics for decisions, exposed on the admin port.

Each sidecar process owns one `RouterMetrics` with its own registry (no module-level
globals), so tests can build as many as they like.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidecar.core.decision import Decision

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)


class RouterMetrics:
    """Counters and histograms of routing decisions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def decided(self, decision: Decision, classifier: str, seconds: float) -> None:
        """Record one decision, what the classifier did for it, and how long it took."""
        self._decisions.labels(
            decision.upstream, decision.route, decision.policy.value, classifier
        ).inc()
        self._latency.observe(seconds)

    def rejected(self, code: str) -> None:
        """Record a request refused with an error."""
        self._rejections.labels(code).inc()

    def error(self, kind: str) -> None:
        """Record an unexpected error (a bug or a broken dependency), by where it happened."""
        self._errors.labels(kind).inc()

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

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

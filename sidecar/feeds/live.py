"""The live board: each feed's latest facts about each provider, merged for the decision core.

Theory. A fact about a provider (its queue, its price, whether Envoy sees it healthy) is
true of one moment, so the board keeps every fact with the monotonic time it was read
and decides at each request what is still worth trusting: a fact older than `max_age_s`
is dropped. Dropping is not the same for every fact. A stale *price* falls back to the
static price in the Envoy YAML (it changes rarely, and the YAML is a sane default). A
stale *queue* of a provider that has a metrics endpoint is treated conservatively, as
one full batch waiting (`max_concurrency`): a server whose metrics went silent is more
likely overloaded or broken than idle, and the router should not pile onto it. A
provider without a metrics endpoint has no queue fact at all and is neutral. Every
choice is written into the state's `notes`, which the decision's reason shows.

`merge` is pure (time is an argument); `LiveBoard` only stores the latest readings the
feeds hand it and calls `merge` with the clock. What a controller pushed is laid over
the merged state (`sidecar.feeds.push`); a pushed queue is a load reading like any other.
Last, what real traffic said (`sidecar.feeds.passive`, from Envoy's access log): it can
only take a provider out for a while or raise its TTFT.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sidecar.core.catalogue import Catalogue, Price
from sidecar.core.decision import ProviderSnapshot, ProviderState
from sidecar.feeds.engines import LoadSample
from sidecar.feeds.passive import PassiveSignal, with_signals
from sidecar.feeds.push import ProviderPush, PushedState, overlay


@dataclass(frozen=True)
class LoadReading:
    """A server's load, when it was read."""

    sample: LoadSample
    taken_at: float


@dataclass(frozen=True)
class PriceReading:
    """A price list for some providers, where it came from, and when it was read."""

    prices: Mapping[str, Price]
    source: str
    taken_at: float


def merge(
    now: float,
    catalogue: Catalogue,
    health: ProviderSnapshot,
    loads: Mapping[str, LoadReading],
    prices: PriceReading | None,
    max_age_s: float,
    price_max_age_s: float | None = None,
) -> ProviderSnapshot:
    """Every provider's state at `now`, from the facts still fresh enough to trust."""
    states: dict[str, ProviderState] = {}
    price_age = None if prices is None else now - prices.taken_at
    price_limit = max_age_s if price_max_age_s is None else price_max_age_s
    for provider in catalogue.providers:
        cluster = provider.cluster
        notes: list[str] = []
        waiting: float | None = None
        load = loads.get(cluster)
        if load is not None and now - load.taken_at <= max_age_s:
            waiting = load.sample.waiting
            if waiting is not None:
                notes.append(f"{waiting:g} waiting ({now - load.taken_at:.1f} s old)")
        elif provider.metrics_url is not None:
            waiting = float(provider.max_concurrency)
            age = "never read" if load is None else f"{now - load.taken_at:.0f} s old"
            notes.append(f"queue unknown ({age}): assumed {waiting:g} waiting")
        price = None
        if prices is not None and price_age is not None and cluster in prices.prices:
            if price_age <= price_limit:
                price = prices.prices[cluster]
                notes.append(f"price from {prices.source} ({price_age:.0f} s old)")
            else:
                notes.append(f"{prices.source} stale ({price_age:.0f} s): static price")
        healthy = health.state(cluster).healthy
        if not healthy:
            notes.append("unhealthy in Envoy")
        if notes or waiting is not None or price is not None or not healthy:
            states[cluster] = ProviderState(
                healthy=healthy, queue_waiting=waiting, price=price, notes=tuple(notes)
            )
    return ProviderSnapshot(states=states)


class LiveBoard:
    """The latest reading of each feed, merged into a `ProviderSnapshot` on demand."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        max_age_s: float,
        price_max_age_s: float | None = None,
        push_max_age_s: float = 10.0,
        health: Callable[[], ProviderSnapshot] = ProviderSnapshot,
        passive: Callable[[float], Mapping[str, PassiveSignal]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalogue = catalogue
        self._passive = passive
        self._max_age_s = max_age_s
        self._price_max_age_s = price_max_age_s
        self._health = health
        self._clock = clock
        self._loads: dict[str, LoadReading] = {}
        self._prices: PriceReading | None = None
        self._push_max_age_s = push_max_age_s
        self._pushed: dict[str, PushedState] = {}

    def record_load(self, cluster: str, sample: LoadSample, *, age_s: float = 0.0) -> None:
        """A load reading of one provider, `age_s` old; an older one never replaces a newer."""
        taken_at = self._clock() - age_s
        kept = self._loads.get(cluster)
        if kept is None or kept.taken_at <= taken_at:
            self._loads[cluster] = LoadReading(sample, taken_at)

    def record_push(self, push: ProviderPush) -> None:
        """Facts a controller pushed about one provider (see `sidecar.feeds.push`)."""
        if push.queue_waiting is not None:
            sample = LoadSample(push.queue_waiting, push.queue_running, None)
            self.record_load(push.cluster, sample, age_s=push.age_s)
        kept = self._pushed.get(push.cluster, PushedState())
        self._pushed[push.cluster] = kept.with_push(push, self._clock() - push.age_s)

    def record_prices(self, prices: Mapping[str, Price], source: str) -> None:
        """A fresh price list (cluster -> price) from `source`."""
        self._prices = PriceReading(dict(prices), source, self._clock())

    def reading_ages(self) -> list[tuple[str, str, float]]:
        """(feed, cluster, seconds since read) of each provider's latest load and price."""
        now = self._clock()
        ages = [("load", cluster, now - load.taken_at) for cluster, load in self._loads.items()]
        prices = self._prices
        if prices is not None:
            ages.extend(("price", cluster, now - prices.taken_at) for cluster in prices.prices)
        return ages

    def snapshot(self) -> ProviderSnapshot:
        """What the decision core routes by, now."""
        now = self._clock()
        merged = merge(
            now,
            self._catalogue,
            self._health(),
            self._loads,
            self._prices,
            self._max_age_s,
            self._price_max_age_s,
        )
        pushed = overlay(merged, self._pushed, now, self._push_max_age_s)
        return pushed if self._passive is None else with_signals(pushed, self._passive(now))

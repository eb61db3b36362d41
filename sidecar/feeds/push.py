"""The push feed's core: what a controller may push about a provider, and how it counts.

Theory. An operator's controller (a Kubernetes operator, a fleet manager) may know more
about a provider than the sidecar can read for itself: a price it negotiated, a
deployment it is draining, the queue of a server the sidecar cannot reach. It pushes
those facts through the FeedService gRPC API (proto/inference_router/v1/feeds.proto).
Every fact is optional, and an update says how old its facts already were when sent, so
each fact is kept with the monotonic time it was true and trusted, like any other
reading, only up to a limit. How a pushed fact meets the other feeds':

- the queue (waiting, running) is a load reading like a scrape's or Prometheus's: the
  newer reading wins, and a stale one falls under the board's queue rule (one full batch
  assumed waiting), so it lives in the board's load readings, not here;
- health is AND-ed: a provider Envoy sees down stays down whatever a controller says, and
  a controller can take out a provider that Envoy still serves (e.g. one it is draining);
- price, TTFT and tokens/s replace what the other feeds and the Envoy YAML say while they
  are fresh; once stale they are dropped (the reason says so) and the others apply again.

Pure: `check_push` and `overlay` take everything as arguments (the time too); the board
(`LiveBoard.record_push`) stores, the gRPC servicer (`sidecar.serving.feed_api`) converts.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from sidecar.core.catalogue import Price
from sidecar.core.decision import ProviderSnapshot
from sidecar.errors import RequestError

T = TypeVar("T")


@dataclass(frozen=True)
class ProviderPush:
    """One update a controller pushed about one provider; None: not said."""

    cluster: str
    queue_waiting: float | None = None
    queue_running: float | None = None
    healthy: bool | None = None
    price: Price | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    # How old these facts already were when sent; 0: observed just now.
    age_s: float = 0.0


def check_push(updates: Sequence[ProviderPush], clusters: Collection[str]) -> None:
    """Refuse the whole push (RequestError naming the field) if any update is unusable."""
    for position, update in enumerate(updates):
        where = f"updates[{position}]"
        if update.cluster not in clusters:
            known = ", ".join(sorted(clusters))
            raise RequestError(
                f"{where}.cluster: unknown cluster {update.cluster!r} (known: {known})",
                param=f"{where}.cluster",
            )
        price = update.price
        numbers = {
            "queue_waiting": update.queue_waiting,
            "queue_running": update.queue_running,
            "price.input_per_mtok": None if price is None else price.input_per_mtok,
            "price.output_per_mtok": None if price is None else price.output_per_mtok,
            "ttft_s": update.ttft_s,
            "tokens_per_s": update.tokens_per_s,
            "age_s": update.age_s,
        }
        for name, value in numbers.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise RequestError(
                    f"{where}.{name}: must be a finite number >= 0, got {value!r}",
                    param=f"{where}.{name}",
                )
        if update.tokens_per_s == 0:
            # The decision divides by it: a generation rate of zero is no rate at all.
            raise RequestError(
                f"{where}.tokens_per_s: must be above 0", param=f"{where}.tokens_per_s"
            )
        if update.queue_running is not None and update.queue_waiting is None:
            raise RequestError(
                f"{where}.queue_running: needs queue_waiting (they are one reading of the queue)",
                param=f"{where}.queue_running",
            )


@dataclass(frozen=True)
class Fact(Generic[T]):
    """A pushed value and the monotonic time it was true."""

    value: T
    taken_at: float


@dataclass(frozen=True)
class PushedState:
    """The latest pushed health, price, TTFT and tokens/s of one provider."""

    healthy: Fact[bool] | None = None
    price: Fact[Price] | None = None
    ttft_s: Fact[float] | None = None
    tokens_per_s: Fact[float] | None = None

    def with_push(self, push: ProviderPush, taken_at: float) -> PushedState:
        """This state with the facts `push` carries; an older fact never replaces a newer."""
        return PushedState(
            healthy=_newer(self.healthy, push.healthy, taken_at),
            price=_newer(self.price, push.price, taken_at),
            ttft_s=_newer(self.ttft_s, push.ttft_s, taken_at),
            tokens_per_s=_newer(self.tokens_per_s, push.tokens_per_s, taken_at),
        )


def _newer(kept: Fact[T] | None, value: T | None, taken_at: float) -> Fact[T] | None:
    if value is None or (kept is not None and kept.taken_at > taken_at):
        return kept
    return Fact(value, taken_at)


def overlay(
    snapshot: ProviderSnapshot,
    pushed: Mapping[str, PushedState],
    now: float,
    max_age_s: float,
) -> ProviderSnapshot:
    """`snapshot` with the pushed facts still fresh at `now` laid over it, each noted."""
    states = dict(snapshot.states)
    for cluster, facts in pushed.items():
        # Only "unhealthy" counts: a pushed "healthy" cannot overrule Envoy's view.
        down_fact = facts.healthy if facts.healthy and not facts.healthy.value else None
        down, down_note = _fresh(down_fact, "unhealthy", now, max_age_s)
        price, price_note = _fresh(facts.price, "price", now, max_age_s)
        ttft, ttft_note = _fresh(facts.ttft_s, "TTFT", now, max_age_s)
        rate, rate_note = _fresh(facts.tokens_per_s, "tokens/s", now, max_age_s)
        notes = tuple(n for n in (down_note, price_note, ttft_note, rate_note) if n)
        if not notes:
            continue
        state = snapshot.state(cluster)
        states[cluster] = replace(
            state,
            healthy=state.healthy and down is None,
            price=state.price if price is None else price.value,
            ttft_s=state.ttft_s if ttft is None else ttft.value,
            tokens_per_s=state.tokens_per_s if rate is None else rate.value,
            notes=state.notes + notes,
        )
    return ProviderSnapshot(states=states)


def _fresh(
    fact: Fact[T] | None, what: str, now: float, max_age_s: float
) -> tuple[Fact[T] | None, str | None]:
    """The fact if it is still fresh at `now`, and the note saying whether it was used."""
    if fact is None:
        return None, None
    age = now - fact.taken_at
    if age > max_age_s:
        return None, f"pushed {what} stale ({age:.0f} s old): not used"
    return fact, f"pushed {what} ({age:.1f} s old)"

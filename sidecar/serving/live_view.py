"""The live view on the admin port: a page (GET /) and the JSON it polls (GET /live.json).

Theory. An operator watching the router wants three things at a glance: what the router
believes about each provider (health, queue, price in use and where it came from, how old
each feed's reading is), how traffic is split across routes and upstreams, and the latest
decisions with their reasons. Provider state is not copied for the page: /live.json is
built on each request from the live objects the decisions and /metrics read (the board's
snapshot and reading ages), plus `DecisionLog`, a ring buffer of the last few decisions
and a count of every (route, upstream) pair since start, fed by `RouterMetrics.decided`
(the one place each decision of Envoy's traffic is recorded; /explain and the gRPC
`Decide` are not traffic and are not shown). Recording is an append (2.8 µs), so nobody pays
for the view while nobody watches.

A record keeps the decision's own fields and its reason, which names routes, tiers,
clusters, models and prices: never the prompt text, never a header. /live.json still
answers loopback callers only (403 otherwise), like /explain: the admin port may be bound
wider for Prometheus, but routes and reasons are the operator's. The page is one static
file with inline CSS and JS (package data; no build step, nothing from a CDN), holds no
data, and rewrites its tables in place from /live.json every second.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources

from aiohttp import web

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import Decision, ProviderSnapshot
from sidecar.errors import RequestError
from sidecar.serving.explain import is_loopback
from sidecar.serving.metrics import ReadingAges
from sidecar.serving.statuses import openai_error_body

LIVE_PAGE_PATH = "/"
LIVE_JSON_PATH = "/live.json"
# Enough to see a burst in the table; /live.json is then about 20 KB (4 providers).
DEFAULT_RECENT = 50

_PAGE = "live_view.html"


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as the live view shows it (no prompt, no headers)."""

    at: float  # wall-clock seconds since the epoch, for the page to show
    decision_id: str
    route: str
    upstream: str
    model: str
    tier: str
    policy: str
    classifier: str
    expected_cost_usd: float | None
    expected_latency_s: float | None
    reason: str


@dataclass(frozen=True)
class MixRow:
    """How many decisions sent one route to one upstream since the sidecar started."""

    route: str
    upstream: str
    count: int


@dataclass(frozen=True)
class ProviderRow:
    """One provider as the decisions see it now."""

    cluster: str
    model: str
    tier: str
    healthy: bool  # False: the router avoids it (Envoy, a controller or its traffic said so)
    queue_waiting: float | None
    price_input_per_mtok: float
    price_output_per_mtok: float
    price_source: str  # "feed" (a live price list) or "static" (the Envoy YAML)
    load_age_s: float | None
    price_age_s: float | None
    notes: tuple[str, ...]


class DecisionLog:
    """The last `size` decisions and the (route, upstream) counts since start."""

    def __init__(self, size: int = DEFAULT_RECENT, clock: Callable[[], float] = time.time) -> None:
        if size < 1:
            raise ValueError(f"the decision log needs room for at least one decision, not {size}")
        self._recent: deque[DecisionRecord] = deque(maxlen=size)
        self._mix: Counter[tuple[str, str]] = Counter()
        self._clock = clock

    def record(self, decision: Decision, classifier: str) -> None:
        """Keep one decision (the `RouterMetrics.on_decided` listener)."""
        chosen = next((c for c in decision.candidates if c.cluster == decision.upstream), None)
        self._recent.append(
            DecisionRecord(
                at=self._clock(),
                decision_id=decision.decision_id,
                route=decision.route,
                upstream=decision.upstream,
                model=decision.model,
                tier=decision.tier,
                policy=decision.policy.value,
                classifier=classifier,
                expected_cost_usd=None if chosen is None else chosen.expected_cost_usd,
                expected_latency_s=None if chosen is None else chosen.expected_latency_s,
                reason=decision.reason,
            )
        )
        self._mix[decision.route, decision.upstream] += 1

    def recent(self) -> list[DecisionRecord]:
        """The kept decisions, newest first."""
        return list(reversed(self._recent))

    def mix(self) -> list[MixRow]:
        """Decisions per (route, upstream) since start, most frequent first."""
        return [MixRow(route, upstream, n) for (route, upstream), n in self._mix.most_common()]


def provider_rows(
    catalogue: Catalogue, snapshot: ProviderSnapshot, ages: Iterable[tuple[str, str, float]]
) -> list[ProviderRow]:
    """Each provider's live state, with the ages of its latest load and price readings."""
    age = {(feed, cluster): seconds for feed, cluster, seconds in ages}
    rows = []
    for provider in catalogue.providers:
        state = snapshot.state(provider.cluster)
        price = state.price or provider.price
        rows.append(
            ProviderRow(
                cluster=provider.cluster,
                model=provider.model,
                tier=provider.tier,
                healthy=state.healthy,
                queue_waiting=state.queue_waiting,
                price_input_per_mtok=price.input_per_mtok,
                price_output_per_mtok=price.output_per_mtok,
                price_source="static" if state.price is None else "feed",
                load_age_s=age.get(("load", provider.cluster)),
                price_age_s=age.get(("price", provider.cluster)),
                notes=state.notes,
            )
        )
    return rows


def live_state(now: float, providers: list[ProviderRow], log: DecisionLog) -> dict[str, object]:
    """The body of /live.json (`now`: wall-clock seconds since the epoch)."""
    mix = log.mix()
    return {
        "now": now,
        "providers": [asdict(row) for row in providers],
        "mix": {"total": sum(row.count for row in mix), "rows": [asdict(row) for row in mix]},
        "decisions": [asdict(record) for record in log.recent()],
    }


class LiveView:
    """The admin routes of the live view, over the sidecar's live objects."""

    def __init__(
        self,
        catalogue: Catalogue,
        snapshot: Callable[[], ProviderSnapshot],
        board: ReadingAges,
        log: DecisionLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalogue = catalogue
        self._snapshot = snapshot
        self._board = board
        self._log = log
        self._clock = clock
        self._page = resources.files("sidecar.serving").joinpath(_PAGE).read_bytes()

    def state(self) -> dict[str, object]:
        """What /live.json answers now."""
        rows = provider_rows(self._catalogue, self._snapshot(), self._board.reading_ages())
        return live_state(self._clock(), rows, self._log)

    def routes(self) -> list[web.RouteDef]:
        """GET / (the page) and GET /live.json (its data)."""
        return [
            web.get(LIVE_PAGE_PATH, self._serve_page),
            web.get(LIVE_JSON_PATH, self._serve_json),
        ]

    async def _serve_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def _serve_json(self, request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            error = RequestError(
                f"{LIVE_JSON_PATH} answers loopback callers only", code="forbidden"
            )
            return web.Response(
                status=403, body=openai_error_body(error), content_type="application/json"
            )
        return web.Response(
            text=json.dumps(self.state(), separators=(",", ":")),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

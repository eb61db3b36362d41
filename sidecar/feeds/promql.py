"""Fleet feed: queue depth from a Prometheus server that already scrapes the model servers.

Theory. One sidecar runs beside every application pod, so N sidecars scraping M model
servers directly make N x M scrapes per interval. The operator's Prometheus already
scrapes every model server once; each sidecar asks it instead, with ONE instant query per
interval for every provider and every metric kind at once, e.g.

    {__name__=~"vllm:num_requests_waiting|vllm:num_requests_running|...",
     instance=~"10\\.0\\.0\\.7:8000|..."}[5000ms]

A range selector on purpose: a plain instant vector stamps every value with the query's
evaluation time (and Prometheus goes on returning a series for minutes after its last
scrape), whereas a range selector returns the raw samples with the time each one was
scraped. The last sample of a series gives the value and its age (the sidecar's wall
clock minus Prometheus's timestamp, so the two clocks must agree, as NTP sees to), so a
series Prometheus stopped scraping ages on the board like a silent direct scrape instead
of looking fresh because the query was. The window is the staleness limit: older samples
are not even sent.

Series are mapped to providers by a label. By default `instance` (the host:port
Prometheus scraped) is matched against the host:port of each provider's `metrics_url`,
which fits a static scrape config. With service discovery `instance` is a pod address, so
a relabel rule can instead put the Envoy cluster name in a label of its own
(`cluster_label`), which also sums a cluster's replicas. A provider's series (one per
model, GPU or replica) are summed, as the direct scrape does, and the reading is as old
as the oldest of them.

Split sans-IO: `build_query`, `parse_matrix` and `readings` are pure and take the time as
an argument; `PrometheusLoadFeed` is the thin poller around them: one POST per interval,
a timeout on the call and on Prometheus's evaluation, a refused query reported with
Prometheus's own words, a longer pause after each failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from sidecar.config.settings import LoadFeedSettings, PrometheusSourceSettings
from sidecar.core.catalogue import Catalogue
from sidecar.feeds.engines import LOAD_METRICS, LoadMetrics, LoadSample
from sidecar.feeds.envoy_health import next_poll_in
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.poller import Poller

log = logging.getLogger(__name__)

INSTANCE = "instance"


@dataclass(frozen=True)
class PromTarget:
    """A provider the query covers: its cluster, the label values that mean it, its names."""

    cluster: str
    keys: tuple[str, ...]
    metrics: LoadMetrics


@dataclass(frozen=True)
class Series:
    """The last sample of one series: its labels (with `__name__`), value and unix time."""

    labels: Mapping[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True)
class AgedSample:
    """A provider's load as Prometheus last scraped it, and how old that was."""

    sample: LoadSample
    age_s: float


def instance_keys(metrics_url: str) -> tuple[str, ...]:
    """The `instance` label Prometheus gives a target scraped at `metrics_url`."""
    parts = urlsplit(metrics_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        return (f"{host}:{parts.port}",)
    # Prometheus 2 adds the scheme's port to a target written without one; 3 does not.
    return (f"{host}:{443 if parts.scheme == 'https' else 80}", host)


def prometheus_targets(catalogue: Catalogue, cluster_label: str | None) -> tuple[PromTarget, ...]:
    """Every provider whose engine exports load metrics and that the label can name."""
    targets = []
    for provider in catalogue.providers:
        metrics = LOAD_METRICS[provider.engine]
        if not metrics.names():
            continue
        if cluster_label is not None:
            keys: tuple[str, ...] = (provider.cluster,)
        elif provider.metrics_url is not None:
            keys = instance_keys(provider.metrics_url)
        else:
            continue
        targets.append(PromTarget(provider.cluster, keys, metrics))
    return tuple(targets)


def build_query(targets: Sequence[PromTarget], label: str, window_s: float) -> str:
    """The one PromQL query for every target's load samples within the last `window_s`."""
    names = sorted({name for target in targets for name in target.metrics.names()})
    keys = sorted({key for target in targets for key in target.keys})
    window_ms = max(1, round(window_s * 1000))
    return (
        f"{{__name__=~{_string(_alternatives(names))},"
        f"{label}=~{_string(_alternatives(keys))}}}[{window_ms}ms]"
    )


def _alternatives(values: Iterable[str]) -> str:
    # Go's RE2 accepts a backslash before any punctuation, which is all re.escape adds.
    return "|".join(re.escape(value) for value in values)


def _string(text: str) -> str:
    # A JSON string is a valid PromQL double-quoted string (same escapes).
    return json.dumps(text)


def parse_matrix(document: object) -> tuple[Series, ...]:
    """The last sample of each series in an `/api/v1/query` answer of a range selector.

    Raises ValueError with Prometheus's own message when it refused the query, and when
    the answer is not shaped like Prometheus's.
    """
    if not isinstance(document, Mapping):
        raise ValueError("not a Prometheus answer: not a JSON object")
    status = document.get("status")
    if status == "error":
        kind, message = document.get("errorType", "error"), document.get("error", "")
        raise ValueError(f"Prometheus refused the query: {kind}: {message}")
    data = document.get("data")
    if status != "success" or not isinstance(data, Mapping):
        raise ValueError(f"not a Prometheus answer: status {status!r}, no data object")
    result = data.get("result")
    if data.get("resultType") != "matrix" or not isinstance(result, list):
        raise ValueError(f"want a matrix result, got resultType {data.get('resultType')!r}")
    series = []
    for position, item in enumerate(result):
        metric = item.get("metric") if isinstance(item, Mapping) else None
        values = item.get("values") if isinstance(item, Mapping) else None
        if not isinstance(metric, Mapping) or not isinstance(values, list):
            raise ValueError(f"result[{position}] has no metric object or values list")
        if not values:
            continue
        last = values[-1]
        if not isinstance(last, list) or len(last) != 2:
            raise ValueError(f"result[{position}]: a sample is not a [time, value] pair")
        # float() reads Prometheus's "NaN" and "+Inf"; a TypeError means a wrong shape.
        try:
            series.append(Series(metric, float(last[1]), float(last[0])))
        except TypeError as error:
            raise ValueError(f"result[{position}]: a sample is not numeric") from error
    return tuple(series)


def readings(
    series: Iterable[Series], targets: Sequence[PromTarget], label: str, now: float
) -> dict[str, AgedSample]:
    """Each target's load from the series labelled with one of its keys, as of `now`.

    A target with no usable series is left out (its last reading ages on the board).
    Values that are not finite numbers are ignored.
    """
    by_key: dict[str, list[Series]] = {}
    for one in series:
        key = one.labels.get(label)
        if key is not None and math.isfinite(one.value):
            by_key.setdefault(key, []).append(one)
    found: dict[str, AgedSample] = {}
    for target in targets:
        names = target.metrics.names()
        used = [
            s
            for key in target.keys
            for s in by_key.get(key, ())
            if s.labels.get("__name__") in names
        ]
        if not used:
            continue
        totals: dict[str, float] = {}
        for one in used:
            name = one.labels["__name__"]
            totals[name] = totals.get(name, 0.0) + one.value
        metrics = target.metrics
        sample = LoadSample(
            waiting=totals.get(metrics.waiting) if metrics.waiting else None,
            running=totals.get(metrics.running) if metrics.running else None,
            kv_usage=totals.get(metrics.kv_usage) if metrics.kv_usage else None,
        )
        oldest = min(one.timestamp for one in used)
        found[target.cluster] = AgedSample(sample, max(0.0, now - oldest))
    return found


class PrometheusLoadFeed(Poller):
    """Asks Prometheus for every provider's load once per interval; records it on the board."""

    def __init__(
        self,
        board: LiveBoard,
        url: str,
        targets: Sequence[PromTarget],
        *,
        label: str,
        interval_s: float,
        timeout_s: float,
        window_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("prometheus-load-feed", timeout_s=timeout_s)
        self._board = board
        self.url = f"{url.rstrip('/')}/api/v1/query"
        self._targets = tuple(targets)
        self._label = label
        self._interval_s = interval_s
        self._window_s = window_s
        self._clock = clock
        self.query = build_query(self._targets, label, window_s)
        # Prometheus stops evaluating when we stop waiting.
        self._form = {"query": self.query, "timeout": f"{max(1, round(timeout_s * 1000))}ms"}
        self._failures = 0
        self._missing: set[str] = set()

    async def start(self) -> None:
        """Begin querying in the background."""
        await super().start()
        log.info("reading the load of %d providers from Prometheus at %s every %.1fs: %s",
                 len(self._targets), self.url, self._interval_s, self.query)  # fmt: skip

    async def query_once(self) -> dict[str, AgedSample]:
        """Run the query once and record what it found; raises on any failure."""
        async with self.session.post(self.url, data=self._form) as response:
            body = await response.read()
            status = response.status
        # Off the loop: the answer for 1,000 vLLM servers (3,000 series, 0.7 MB) took
        # 26-45 ms to decode and read here, and would hold every decision that long;
        # for 20 servers, 0.25 ms.
        found = await asyncio.to_thread(self._read, body, status)
        for cluster, aged in found.items():
            self._board.record_load(cluster, aged.sample, age_s=aged.age_s)
        self._report_missing(found)
        return found

    def _read(self, body: bytes, status: int) -> dict[str, AgedSample]:
        try:
            document = json.loads(body)
        except ValueError:
            raise ValueError(f"HTTP {status}: the answer is not JSON") from None
        return readings(parse_matrix(document), self._targets, self._label, self._clock())

    async def tick(self) -> float:
        """Query once; the next query is due after the interval, or a backoff on failure."""
        try:
            await self.query_once()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.record_read(False)
            self._failures += 1
            if self._failures == 1:
                log.warning("cannot read provider load from Prometheus at %s: %s; "
                            "readings age out after %.0fs", self.url,
                            str(error) or type(error).__name__, self._window_s)  # fmt: skip
        else:
            self.record_read(True)
            if self._failures:
                log.info("reading provider load from Prometheus again at %s", self.url)
            self._failures = 0
        return next_poll_in(self._failures, self._interval_s)

    def _report_missing(self, found: Mapping[str, AgedSample]) -> None:
        missing = {target.cluster for target in self._targets} - found.keys()
        for cluster in sorted(missing - self._missing):
            log.warning("Prometheus has no load sample of %s from the last %.1fs (is it "
                        "scraped, and more often than that?)", cluster, self._window_s)  # fmt: skip
        for cluster in sorted(self._missing - missing):
            log.info("Prometheus has load samples of %s again", cluster)
        self._missing = missing


def prometheus_load_feed(
    board: LiveBoard,
    catalogue: Catalogue,
    source: PrometheusSourceSettings,
    settings: LoadFeedSettings,
) -> PrometheusLoadFeed | None:
    """The fleet feed the settings ask for (not started), or None when no provider fits."""
    targets = prometheus_targets(catalogue, source.cluster_label)
    if not targets:
        log.info("no provider exports load metrics that Prometheus could hold: no fleet feed")
        return None
    return PrometheusLoadFeed(
        board,
        source.url,
        targets,
        label=source.cluster_label or INSTANCE,
        interval_s=settings.interval_s,
        timeout_s=settings.timeout_s,
        window_s=settings.max_age_s,
    )

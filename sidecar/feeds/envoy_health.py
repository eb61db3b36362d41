"""Envoy's view of provider health, read from its admin `/clusters?format=json`.

Theory: Envoy already knows which providers are down. Its active health checks and its
outlier detection flag every host (`failed_active_health_check`, `failed_outlier_check`,
...), and its retries and failover route around them within a request. The router only
has to stop *choosing* such a provider, so that a request is not first sent to a dead
cluster and rescued by a retry, and so that a tier with no live provider hands over to
the nearest one (the decision core's failover). A cluster is unhealthy when none of its
hosts is usable; a host is unusable when any failure flag is set or its EDS status says
so (degraded hosts still serve).

Health read from a poll is a fact about one moment, so it is kept with the time it was
read (`HealthReading`) and trusted only up to `max_age_s`: when Envoy's admin stops
answering, the router forgets what it heard and treats every provider as healthy (its
state before the feed existed) rather than avoiding one forever on old news.

Split sans-IO: `parse_clusters` (the admin document to {cluster: healthy}), the staleness
rule (`HealthReading.snapshot`) and the backoff rule (`next_poll_in`) are pure and take
the time as an argument; `EnvoyHealthFeed` is the thin aiohttp poller around them: one
ClientSession, a timeout on every call, a longer pause after each failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from sidecar.config.envoy import admin_address
from sidecar.config.settings import EnvoyHealthSettings
from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import ProviderSnapshot, ProviderState
from sidecar.feeds.poller import Poller

log = logging.getLogger(__name__)

# Host flags under which Envoy sends a host no traffic (admin.v3.HostHealthStatus).
# Not here: failed_active_degraded_check (degraded hosts still serve) and
# pending_active_hc (not yet checked; Envoy routes to it unless told otherwise).
UNHEALTHY_FLAGS = (
    "failed_active_health_check",
    "failed_outlier_check",
    "pending_dynamic_removal",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
)
UNHEALTHY_EDS_STATUSES = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})
# The longest pause between polls after failures, whatever the interval.
BACKOFF_CAP_S = 5.0

EMPTY = ProviderSnapshot()
_UNHEALTHY = ProviderState(healthy=False)


def parse_clusters(document: object) -> dict[str, bool]:
    """Each cluster in an admin `/clusters?format=json` document, and whether it can serve.

    Raises ValueError when the document is not shaped like Envoy's answer.
    """
    statuses = document.get("cluster_statuses") if isinstance(document, Mapping) else None
    if not isinstance(statuses, list):
        raise ValueError("not an Envoy /clusters document: no cluster_statuses list")
    healthy: dict[str, bool] = {}
    for position, cluster in enumerate(statuses):
        name = cluster.get("name") if isinstance(cluster, Mapping) else None
        if not isinstance(name, str):
            raise ValueError(f"cluster_statuses[{position}] has no name")
        hosts = cluster.get("host_statuses", [])
        if not isinstance(hosts, list):
            raise ValueError(f"cluster {name!r}: host_statuses is not a list")
        # No host at all (e.g. a DNS name with no address) serves nothing either.
        healthy[name] = any(_host_serves(host) for host in hosts)
    return healthy


def _host_serves(host: object) -> bool:
    status = host.get("health_status", {}) if isinstance(host, Mapping) else None
    if not isinstance(status, Mapping):
        raise ValueError("a host has no health_status object")
    if any(status.get(flag) is True for flag in UNHEALTHY_FLAGS):
        return False
    return status.get("eds_health_status", "HEALTHY") not in UNHEALTHY_EDS_STATUSES


@dataclass(frozen=True)
class HealthReading:
    """Which providers Envoy reported unhealthy, and when (monotonic seconds)."""

    unhealthy: frozenset[str]
    taken_at: float

    @classmethod
    def of(
        cls, healthy: Mapping[str, bool], providers: Iterable[str], taken_at: float
    ) -> HealthReading:
        """The reading for the router's providers; a provider Envoy did not list is unknown."""
        down = frozenset(p for p in providers if healthy.get(p) is False)
        return cls(down, taken_at)

    def snapshot(self, now: float, max_age_s: float) -> ProviderSnapshot:
        """The snapshot to decide by at `now`: empty (all healthy) once the reading is stale."""
        if now - self.taken_at > max_age_s:
            return EMPTY
        return ProviderSnapshot(states={cluster: _UNHEALTHY for cluster in self.unhealthy})


def next_poll_in(failures: int, interval_s: float) -> float:
    """Seconds until the next poll after `failures` failed polls in a row."""
    if failures <= 0:
        return interval_s
    return min(max(interval_s, BACKOFF_CAP_S), interval_s * 2.0**failures)


class EnvoyHealthFeed(Poller):
    """Polls Envoy's admin `/clusters` and serves the latest trusted `ProviderSnapshot`."""

    def __init__(
        self,
        url: str,
        providers: Iterable[str],
        *,
        interval_s: float,
        timeout_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("envoy-health-feed", timeout_s=timeout_s)
        self.url = url
        self._providers = tuple(providers)
        self._interval_s = interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._reading: HealthReading | None = None
        self._failures = 0

    def snapshot(self) -> ProviderSnapshot:
        """What the router decides by now: Envoy's latest reading while it is fresh."""
        reading = self._reading
        return EMPTY if reading is None else reading.snapshot(self._clock(), self._max_age_s)

    async def start(self) -> None:
        """Begin polling in the background."""
        await super().start()
        log.info("reading provider health from Envoy at %s every %.1fs", self.url, self._interval_s)

    async def poll(self) -> HealthReading:
        """Read Envoy's admin once and keep the reading; raises on any failure."""
        async with self.session.get(self.url) as response:
            response.raise_for_status()
            body = await response.read()
        # A few kB per provider cluster: parsing it on the loop costs well under a ms.
        reading = HealthReading.of(parse_clusters(json.loads(body)), self._providers, self._clock())
        self._report_changes(reading)
        self._reading = reading
        return reading

    async def tick(self) -> float:
        """Poll once; the next poll is due after the interval, or a backoff on failure."""
        try:
            await self.poll()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.record_read(False)
            self._failures += 1
            if self._failures == 1:
                # Before any reading this is Envoy still starting: not worth a warning.
                level = logging.INFO if self._reading is None else logging.WARNING
                log.log(
                    level,
                    "cannot read provider health from Envoy at %s (%s); what it last "
                    "said counts for %.0fs after it was read",
                    self.url, str(error) or type(error).__name__, self._max_age_s,
                )  # fmt: skip
        else:
            self.record_read(True)
            if self._failures:
                log.info("reading provider health from Envoy again at %s", self.url)
            self._failures = 0
        return next_poll_in(self._failures, self._interval_s)

    def _report_changes(self, reading: HealthReading) -> None:
        before = self._reading.unhealthy if self._reading is not None else frozenset()
        for cluster in sorted(reading.unhealthy - before):
            log.warning("Envoy reports provider %s unhealthy; the router avoids it", cluster)
        for cluster in sorted(before - reading.unhealthy):
            log.info("Envoy reports provider %s healthy again", cluster)


def admin_clusters_url(host: str, port: int) -> str:
    """The URL of Envoy's admin `/clusters` document."""
    bracketed = f"[{host}]" if ":" in host else host
    return f"http://{bracketed}:{port}/clusters?format=json"


def health_feed(
    settings: EnvoyHealthSettings,
    envoy_config: Mapping[str, object],
    source: str,
    catalogue: Catalogue,
) -> EnvoyHealthFeed | None:
    """The feed the settings ask for (not started), or None when it is off or has no admin.

    Envoy's admin address comes from the same Envoy YAML the catalogue does (`source`),
    unless `envoy_health.admin` names another.
    """
    if not settings.enabled:
        log.info("provider health from Envoy is off (envoy_health.enabled: false)")
        return None
    if settings.admin is not None:
        host, _, port = settings.admin.rpartition(":")
        address: tuple[str, int] | None = (host.strip("[]"), int(port))
    else:
        address = admin_address(envoy_config, source)
    if address is None:
        log.info("%s has no admin TCP address: provider health from Envoy is off", source)
        return None
    return EnvoyHealthFeed(
        admin_clusters_url(*address),
        (provider.cluster for provider in catalogue.providers),
        interval_s=settings.interval_s,
        timeout_s=settings.timeout_s,
        max_age_s=settings.max_age_s,
    )

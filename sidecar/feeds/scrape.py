"""Direct scrape: each model server's Prometheus endpoint, read on a short interval.

One aiohttp session for every target, a timeout on every request, all targets read
concurrently each interval; a target that fails is skipped (its last reading ages out
on the board, see `sidecar.feeds.live`) and logged once when it starts and stops
failing. At fleet scale (one sidecar per application pod) a Prometheus server that
already scrapes the model servers is the better source: N sidecars would otherwise
scrape M servers N x M times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from sidecar.core.catalogue import Catalogue
from sidecar.feeds.engines import LOAD_METRICS, LoadMetrics, parse_load
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.poller import Poller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrapeTarget:
    """One provider's metrics endpoint and the names its engine uses."""

    cluster: str
    url: str
    metrics: LoadMetrics


def scrape_targets(catalogue: Catalogue) -> tuple[ScrapeTarget, ...]:
    """Every provider with a metrics URL whose engine exports load metrics."""
    return tuple(
        ScrapeTarget(p.cluster, p.metrics_url, LOAD_METRICS[p.engine])
        for p in catalogue.providers
        if p.metrics_url is not None and LOAD_METRICS[p.engine].names()
    )


class LoadScraper(Poller):
    """Reads each target's load every `interval_s` and records it on the board."""

    def __init__(
        self,
        board: LiveBoard,
        targets: Sequence[ScrapeTarget],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        super().__init__("load-scraper", timeout_s=timeout_s)
        self._board = board
        self._targets = tuple(targets)
        self._interval_s = interval_s
        self._failing: set[str] = set()

    async def start(self) -> None:
        """Begin scraping in the background."""
        await super().start()
        log.info("scraping load of %d providers every %.1fs", len(self._targets), self._interval_s)

    async def tick(self) -> float:
        """Scrape every target once; the next round is due after the interval."""
        await self.scrape_once()
        return self._interval_s

    async def scrape_once(self) -> None:
        """Read every target once, concurrently."""
        await asyncio.gather(*(self._scrape(target) for target in self._targets))

    async def _scrape(self, target: ScrapeTarget) -> None:
        try:
            async with self.session.get(target.url) as response:
                response.raise_for_status()
                text = await response.text()
            sample = parse_load(text, target.metrics)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.record_read(False)
            if target.cluster not in self._failing:
                self._failing.add(target.cluster)
                log.warning("cannot read the load of %s at %s: %s", target.cluster, target.url,
                            str(error) or type(error).__name__)  # fmt: skip
            return
        if target.cluster in self._failing:
            self._failing.discard(target.cluster)
            log.info("reading the load of %s again", target.cluster)
        self.record_read(True)
        self._board.record_load(target.cluster, sample)

"""The price feed: a price list read from a URL or a file on an interval, onto the live board.

The document is OpenRouter's `/api/v1/models` shape or a plain `{name: {input, output}}`
table (JSON or YAML), told apart by its shape (`sidecar.feeds.prices`). A read that
fails keeps the last good list, which ages out on the board (`sidecar.feeds.live`):
then the static prices of the Envoy YAML apply again and the explanation says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import yaml

from sidecar.core.catalogue import Catalogue, Price
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.poller import Poller
from sidecar.feeds.prices import match_providers, parse_openrouter, parse_table

log = logging.getLogger(__name__)


def parse_price_document(document: object, catalogue: Catalogue) -> dict[str, Price]:
    """{cluster: Price} from either supported shape; ValueError when it is neither."""
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        return match_providers(parse_openrouter(document), catalogue)
    return match_providers(parse_table(document), catalogue)


class PriceFeed(Poller):
    """Reads a price list every `interval_s` and records it on the board."""

    def __init__(
        self,
        board: LiveBoard,
        catalogue: Catalogue,
        source: str,
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        super().__init__("price-feed", timeout_s=timeout_s)
        self._board = board
        self._catalogue = catalogue
        self._source = source
        self._interval_s = interval_s
        self._failing = False

    async def start(self) -> None:
        """Begin reading in the background."""
        await super().start()
        log.info("reading prices from %s every %.0fs", self._source, self._interval_s)

    async def read_once(self) -> dict[str, Price]:
        """Read the source once and record what it says; raises on any failure."""
        if self._source.startswith(("http://", "https://")):
            async with self.session.get(self._source) as response:
                response.raise_for_status()
                text = await response.text()
        else:
            text = await asyncio.to_thread(Path(self._source).read_text, encoding="utf-8")
        prices = parse_price_document(yaml.safe_load(text), self._catalogue)
        self._board.record_prices(prices, "price feed")
        return prices

    async def tick(self) -> float:
        """Read the list once (a failure keeps the last one); the next read after the interval."""
        try:
            await self.read_once()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, yaml.YAMLError) as e:
            self.record_read(False)
            if not self._failing:
                log.warning("cannot read prices from %s: %s; the last list ages out, "
                            "then static prices apply", self._source, e)  # fmt: skip
            self._failing = True
        else:
            self.record_read(True)
            if self._failing:
                log.info("reading prices from %s again", self._source)
            self._failing = False
        return self._interval_s

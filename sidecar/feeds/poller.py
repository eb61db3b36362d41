"""The lifecycle every feed shares: one aiohttp session, one background task, a clean stop.

A feed subclasses `Poller` and writes `tick`: read its source once, record what it read,
and return how long to wait before the next read (its interval, or a backoff after a
failure). `start` opens the session (a timeout on every call) and the task; `stop` ends
the task between ticks and closes the session. A tick reports each read of its source
with `record_read`, so the sidecar's metrics can say how often a feed fails and how
old its last good read is (read when /metrics is scraped, not pushed on every tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import aiohttp


class Poller(ABC):
    """A background loop of `tick` calls over one shared aiohttp session."""

    def __init__(
        self, name: str, *, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._name = name
        self._timeout_s = timeout_s
        self._read_clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.reads = 0  # reads of the source that succeeded
        self.read_errors = 0  # reads that failed
        self.last_read_at: float | None = None  # monotonic time of the last good read

    @property
    def name(self) -> str:
        """The feed's name, in logs and metric labels."""
        return self._name

    def record_read(self, ok: bool) -> None:
        """Count one read of the source, good or failed (a tick calls it)."""
        if ok:
            self.reads += 1
            self.last_read_at = self._read_clock()
        else:
            self.read_errors += 1

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session every call of this feed goes through (after `start`)."""
        if self._http is None:
            raise RuntimeError(f"{self._name}: used before start()")
        return self._http

    @abstractmethod
    async def tick(self) -> float:
        """Read the source once and record it; seconds until the next tick."""

    async def start(self) -> None:
        """Open the session and begin ticking in the background."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stop ticking and close the session."""
        # The flag, not only the cancel: aiohttp turns a cancel that meets its own timeout
        # into a TimeoutError, which a tick would take for a failed read.
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            delay = await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

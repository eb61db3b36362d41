"""Async micro-batching of embedding calls.

Theory: an ONNX encoder costs far less per text in a batch than alone, and its call
blocks, so it must never run on the event loop. `MicroBatcher` owns one worker thread and
at most one batch in flight. A request joins a pending list; the list is dispatched as a
batch when it holds `max_batch` texts, or when its oldest text has waited `max_wait_s`,
but only while the worker is idle. While a batch runs, newcomers accumulate and go out
together as soon as it finishes (they have already waited longer than `max_wait_s`), so
under load batches grow by themselves and at low load a lone request waits at most
`max_wait_s` before the model runs. Each waiter gets its own row. If the model raises on
a batch of several, each text is retried alone, so one bad prompt fails only itself.

The batcher also keeps a running estimate of the model's cost per text, so callers can
see how long a new text would wait (`expected_wait_s`) and shed load before waiting
(`overloaded`). Two rules keep one slow batch (a paused process, a busy neighbour) from
switching the classifier off for good: nothing is ever shed while the model is idle and
nothing is queued (the next batch re-measures the cost), and the estimate halves for
every `IDLE_HALF_LIFE_S` the model spends idle.

All state is touched only from the event loop thread; the worker thread only runs
`embedder.embed`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidecar.errors import EmbedderError
from sidecar.semantic.embedder import Embedder

log = logging.getLogger(__name__)

# An estimate learnt under a burst (or a stall) should not outlive it by much.
IDLE_HALF_LIFE_S = 1.0
# An exponentially weighted mean follows load and CPU contention within a few batches.
EWMA_WEIGHT = 0.2


@dataclass(frozen=True)
class _Waiter:
    text: str
    future: asyncio.Future[npt.NDArray[np.float32]]


class MicroBatcher:
    """Coalesces concurrent `embed` calls into batched calls on one worker thread."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._embedder = embedder
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._pending: list[_Waiter] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._in_flight_texts = 0
        self._clock = clock
        self._seconds_per_text: float | None = None
        self._idle_since = clock()
        self._closed = False

    @property
    def embedder(self) -> Embedder:
        """The embedder every batch is sent to."""
        return self._embedder

    def seconds_per_text(self) -> float:
        """The model's current cost per text (decayed while idle; 0 until measured)."""
        if self._seconds_per_text is None:
            return 0.0
        if self._in_flight is not None:
            return self._seconds_per_text
        idle_s = max(0.0, self._clock() - self._idle_since)
        return self._seconds_per_text * math.pow(0.5, idle_s / IDLE_HALF_LIFE_S)

    def expected_wait_s(self) -> float:
        """How long a text submitted now would wait for its row (0 until measured)."""
        return (len(self._pending) + self._in_flight_texts + 1) * self.seconds_per_text()

    def overloaded(self, budget_s: float) -> bool:
        """True when a new text would wait longer than `budget_s` behind others.

        Never while the model is idle with nothing queued: then the text goes straight in,
        and its batch measures the model's cost afresh.
        """
        if not self._pending and self._in_flight is None:
            return False
        return self.expected_wait_s() > budget_s

    async def embed(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one text, sharing a model call with whatever arrives alongside it."""
        if self._closed:
            raise EmbedderError("the embedding batcher is closed")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(text, loop.create_future())
        self._pending.append(waiter)
        if len(self._pending) >= self._max_batch:
            self._cancel_timer()
            self._dispatch()
        elif len(self._pending) == 1 and self._in_flight is None:
            self._timer = loop.call_later(self._max_wait_s, self._on_timer)
        return await waiter.future

    async def close(self) -> None:
        """Refuse new texts, finish every accepted one, then stop the worker thread."""
        self._closed = True
        self._cancel_timer()
        while self._pending or self._in_flight is not None:
            if self._in_flight is None:
                self._dispatch()
            if self._in_flight is not None:
                await asyncio.shield(self._in_flight)
        self._executor.shutdown(wait=True)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dispatch(self) -> None:
        if self._in_flight is not None:
            return  # the running batch dispatches the pending ones when it finishes
        # Callers that gave up (cancelled) while pending need no model time.
        self._pending = [w for w in self._pending if not w.future.done()]
        if not self._pending:
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        # Keep what idling has taken off the estimate: the batch will correct it anyway.
        if self._seconds_per_text is not None:
            self._seconds_per_text = self.seconds_per_text()
        self._in_flight_texts = len(batch)
        self._in_flight = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Waiter]) -> None:
        try:
            try:
                rows = await self._embed([w.text for w in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if len(batch) == 1:
                    raise
                # One bad prompt must not fail the innocent ones batched with it.
                log.warning(
                    "embedding batch of %d failed (%s); retrying one by one", len(batch), exc
                )
                await self._run_one_by_one(batch)
            else:
                for w, row in zip(batch, rows, strict=True):
                    if not w.future.done():
                        w.future.set_result(row.copy())
        except asyncio.CancelledError:
            for w in batch:
                w.future.cancel()
            raise
        except Exception as exc:
            log.warning("embedding failed: %s", exc)
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            self._in_flight = None
            self._in_flight_texts = 0
            self._idle_since = self._clock()
            # Whatever arrived meanwhile has waited a whole batch already: send it now.
            self._dispatch()

    async def _run_one_by_one(self, batch: list[_Waiter]) -> None:
        for w in batch:
            if w.future.done():
                continue
            try:
                (row,) = await self._embed([w.text])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not w.future.done():
                    w.future.set_exception(exc)
            else:
                if not w.future.done():
                    w.future.set_result(row.copy())

    async def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        started = self._clock()
        rows = await loop.run_in_executor(self._executor, self._embedder.embed, texts)
        self._observe(self._clock() - started, len(texts))
        if rows.shape[0] != len(texts):
            raise EmbedderError(f"embedder returned {rows.shape[0]} rows for {len(texts)}")
        return rows

    def _observe(self, seconds: float, texts: int) -> None:
        per_text = seconds / texts
        previous = self._seconds_per_text
        self._seconds_per_text = (
            per_text if previous is None else (1 - EWMA_WEIGHT) * previous + EWMA_WEIGHT * per_text
        )

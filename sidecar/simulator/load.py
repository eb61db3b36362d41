"""Load as a model server feels it: a few generation slots, a bounded FIFO queue, counters.

Theory: an inference engine runs at most `concurrency` sequences at once; every further
request waits its turn in arrival order, and once `max_queue` are waiting the server
refuses new work with 429 instead of letting latency grow without bound. `AdmissionGate`
keeps exactly those two numbers, `running` and `waiting`, because they are what the router
reads back through `/metrics` (vLLM's `vllm:num_requests_running` and
`vllm:num_requests_waiting`) to predict queueing delay. A finishing request hands its slot
straight to the oldest waiter, so `running` never dips while others wait and no later
arrival can overtake the queue. `TrafficCounters` holds the monotonically growing totals.
The state lives in one event loop; nothing here is thread-safe, and nothing needs to be.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sidecar.simulator.errors import ApiError


class QueueFullError(ApiError):
    """Every slot is busy and the queue is full: the caller should retry later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "The simulated server is overloaded: all slots are busy and the queue is full. "
            "Please retry after a short wait.",
            status=429,
            code="rate_limit_exceeded",
            error_type="requests",
            retry_after_s=retry_after_s,
        )


class AdmissionGate:
    """A counting semaphore with a bounded, strictly FIFO waiting line."""

    def __init__(self, concurrency: int, max_queue: int, retry_after_s: int) -> None:
        self._concurrency = concurrency
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    @property
    def concurrency(self) -> int:
        """How many requests can run at once."""
        return self._concurrency

    @property
    def capacity(self) -> int:
        """How many requests can be in the server at once, running plus queued."""
        return self._concurrency + self._max_queue

    @property
    def remaining(self) -> int:
        """Requests that could still be admitted right now."""
        return max(0, self.capacity - self._running - len(self._waiters))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the `async with`; raises QueueFullError if refused."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._running < self._concurrency and not self._waiters:
            self._running += 1
            return
        if len(self._waiters) >= self._max_queue:
            raise QueueFullError(self._retry_after_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over in the same tick we were cancelled: pass it on.
                self._release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; running is unchanged
                return
        self._running -= 1


@dataclass
class TrafficCounters:
    """Totals since start, exported as Prometheus counters."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    successes: Counter[str] = field(default_factory=Counter)  # by finish reason
    rejected: int = 0


def render_metrics(model: str, gate: AdmissionGate, counters: TrafficCounters) -> str:
    """Prometheus text exposition (format 0.0.4) with vLLM's metric names."""
    label = f'model_name="{_escape(model)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{{{labels}}} {float(value)!r}" for labels, value in samples)

    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests currently running on GPU.",
        [(label, gate.running)],
    )
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(label, gate.waiting)],
    )
    metric(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(label, gate.running / gate.concurrency)],
    )
    metric(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [(label, counters.prompt_tokens)],
    )
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [(label, counters.generation_tokens)],
    )
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [
            (f'{label},finished_reason="{reason}"', counters.successes[reason])
            for reason in ("stop", "length")
        ],
    )
    metric(
        "simulator:requests_rejected_total",
        "counter",
        "Requests refused with 429 because the queue was full (simulator only).",
        [(label, counters.rejected)],
    )
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

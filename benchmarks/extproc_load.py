"""Drive the sidecar over gRPC exactly the way Envoy does, and time each decision.

One ext_proc stream per request (`sidecar.devstack.extproc_client`, the same client the
adapter's tests use): as the shipped Envoy config does, the buffered body alone with the
path and the router's headers as attributes (`headers_phase=True`: the request headers
first, then the body); the decision is the answer to the body message. Prompts are
distinct (so the exact-repeat cache does not help) unless the caller repeats them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.devstack.extproc_client import chat_request, decision_headers, exchange


@dataclass(frozen=True)
class LoadResult:
    """Latencies (seconds) of completed decisions, failures, and wall time."""

    latencies: tuple[float, ...]
    failures: int
    wall_s: float

    def summary(self) -> dict[str, float]:
        """p50/p99 in ms and decisions per second."""
        ordered = sorted(self.latencies)
        return {
            "n": float(len(ordered)),
            "failures": float(self.failures),
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "decisions_per_s": len(ordered) / self.wall_s,
        }


async def _one(
    stub: ext_grpc.ExternalProcessorStub, prompt: str, model: str, headers_phase: bool
) -> float:
    """Seconds from opening the stream until the stream with the decision ends."""
    started = time.perf_counter()
    replies = await exchange(stub, chat_request(prompt, model=model, headers_phase=headers_phase))
    elapsed = time.perf_counter() - started
    for reply in replies:
        if reply.HasField("immediate_response"):
            raise RuntimeError(f"error reply: {reply.immediate_response.body[:200]!r}")
    if not replies or "x-router-upstream" not in decision_headers(replies[-1]):
        raise RuntimeError("decision without an upstream header")
    return elapsed


async def drive(
    target: str,
    prompts: Sequence[str],
    concurrency: int,
    rate: float | None = None,
    *,
    model: str = "auto",
    seconds: float | None = None,
    headers_phase: bool = False,
) -> LoadResult:
    """Send every prompt once, `concurrency` streams at a time, optionally paced at `rate`/s.

    Unpaced, each stream sends its next prompt as soon as the last is answered (a closed
    loop: the offered load is whatever the sidecar can take). Paced, prompt i is sent at
    start + i/rate (an open loop: a fixed offered load, as real traffic arrives). With
    `seconds`, no prompt is sent after that long (the ones in flight still count).
    `headers_phase`: two messages per stream (Envoy's `request_header_mode: SEND`).
    """
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for position, prompt in enumerate(prompts):
        queue.put_nowait((position, prompt))
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ext_grpc.ExternalProcessorStub(channel)

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                if seconds is not None and time.perf_counter() - started >= seconds:
                    return
                position, prompt = queue.get_nowait()
                if rate is not None:
                    delay = started + position / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    latencies.append(await _one(stub, prompt, model, headers_phase))
                except (grpc.RpcError, RuntimeError):
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(tuple(latencies), failures, wall)

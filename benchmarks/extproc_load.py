"""Drive the sidecar over gRPC exactly the way Envoy does, and time each decision.

One ext_proc stream per request: request headers, then the buffered body; the decision
is the answer to the body message. Prompts are distinct (so the exact-repeat cache does
not help) unless `repeat` is set.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc


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


def _messages(prompt: str) -> list[ext.ProcessingRequest]:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}]})
    headers = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=":path", raw_value=b"/v1/chat/completions"),
            base_pb2.HeaderValue(key=":method", raw_value=b"POST"),
            base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
        ]
    )
    return [
        ext.ProcessingRequest(request_headers=ext.HttpHeaders(headers=headers)),
        ext.ProcessingRequest(request_body=ext.HttpBody(body=body.encode(), end_of_stream=True)),
    ]


async def _one(stub: ext_grpc.ExternalProcessorStub, prompt: str) -> float:
    started = time.perf_counter()
    messages = _messages(prompt)

    async def requests() -> AsyncIterator[ext.ProcessingRequest]:
        for message in messages:
            yield message

    call = stub.Process(requests(), timeout=10)
    async for reply in call:
        if reply.HasField("request_body"):
            headers = reply.request_body.response.header_mutation.set_headers
            if not any(h.header.key == "x-router-upstream" for h in headers):
                raise RuntimeError("decision without an upstream header")
            break
        if reply.HasField("immediate_response"):
            raise RuntimeError(f"error reply: {reply.immediate_response.body[:200]!r}")
    call.cancel()
    return time.perf_counter() - started


async def drive(
    target: str, prompts: Sequence[str], concurrency: int, rate: float | None = None
) -> LoadResult:
    """Send every prompt once, `concurrency` streams at a time, optionally paced at `rate`/s.

    Unpaced, each stream sends its next prompt as soon as the last is answered (a closed
    loop: the offered load is whatever the sidecar can take). Paced, prompt i is sent at
    start + i/rate (an open loop: a fixed offered load, as real traffic arrives).
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
                position, prompt = queue.get_nowait()
                if rate is not None:
                    delay = started + position / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    latencies.append(await _one(stub, prompt))
                except (grpc.RpcError, RuntimeError):
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult(tuple(latencies), failures, wall)

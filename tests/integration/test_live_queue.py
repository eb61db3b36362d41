"""Live queue depth through the real Envoy: a deep queue on the cheaper provider moves traffic.

sim-mid-a (cheaper) and sim-mid-b serve the same model. sim-mid-a is loaded directly,
bypassing Envoy, until about 30 requests wait in its queue; the sidecar scrapes its
vLLM-named metrics every 0.5 s and, within about one interval, sends new requests for
that model to sim-mid-b; once the queue drains they come back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import seconds_until, start_stack

pytestmark = pytest.mark.integration

MODEL = "llama-3.3-70b-instruct"
BODY = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(tmp_path_factory.mktemp("live"), sidecar_args=("--no-semantic",))
    try:
        yield stack
    finally:
        stack.stop()


def _upstream(stack: LocalStack) -> str:
    reply = httpx.post(stack.base_url + "/v1/chat/completions", json=BODY, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers["x-router-upstream"]


def decide(stack: LocalStack) -> router_pb2.DecideResponse:
    """The decision for BODY, from the sidecar's Decide (no provider is called)."""
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        body = httpx.Request("POST", "/", json=BODY).read()
        reply: router_pb2.DecideResponse = stub.Decide(
            router_pb2.DecideRequest(body=body), timeout=10
        )
    return reply


def _waiting(stack: LocalStack, cluster: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports.providers[cluster]}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_waiting"))
    return float(line.rsplit(" ", 1)[1])


class Flood:
    """`count` long requests held open straight at a simulator, from a thread, until stopped."""

    def __init__(self, base: str, count: int) -> None:
        self._base, self._count = base, count
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _run(self) -> None:
        body = {**BODY, "max_tokens": 2000}
        limits = httpx.Limits(max_connections=self._count)
        async with httpx.AsyncClient(base_url=self._base, timeout=60, limits=limits) as client:
            tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=body))
                     for _ in range(self._count)]  # fmt: skip
            await self._stop.wait()
            for task in tasks:  # the simulator abandons a request whose client went away
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_a_deep_queue_on_the_cheaper_provider_moves_traffic_and_back(
    live_stack: LocalStack,
) -> None:
    stack = live_stack
    assert _upstream(stack) == "sim-mid-a"  # idle: the cheaper one
    with Flood(f"http://127.0.0.1:{stack.ports.providers['sim-mid-a']}", 38):
        seconds_until(lambda: _waiting(stack, "sim-mid-a") >= 25, "sim-mid-a's queue builds", 15)
        # Timed with Decide: a request through Envoy that still went to the flooded
        # provider would itself wait in its queue, and the wait would count as switch time.
        moved = seconds_until(lambda: decide(stack).upstream == "sim-mid-b", "decisions move", 10)
        assert _upstream(stack) == "sim-mid-b"  # and a real request goes there
        print(f"moved {moved:.2f} s after the queue reached 25")
    seconds_until(lambda: _waiting(stack, "sim-mid-a") == 0, "sim-mid-a's queue drains", 15)
    back = seconds_until(lambda: decide(stack).upstream == "sim-mid-a", "decisions come back", 10)
    assert _upstream(stack) == "sim-mid-a"
    print(f"back {back:.2f} s after the queue drained")


def test_decide_explains_the_queues_it_used(live_stack: LocalStack) -> None:
    reply = decide(live_stack)
    assert "sim-mid-a: 0 waiting" in reply.explanation.reason
    candidates = {c.cluster: c for c in reply.explanation.candidates}
    mid_a = candidates["sim-mid-a"]
    assert mid_a.chosen and mid_a.healthy and mid_a.HasField("queue_waiting")
    assert mid_a.queue_waiting == 0 and mid_a.notes[0].startswith("0 waiting (")
    assert mid_a.expected_latency_s > 0

"""The decision benchmark's helpers (benchmarks/run.py, benchmarks/extproc_load.py): prompts of
two lengths, the CPU reading, and the bounds that keep every cell of `make bench` short."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from benchmarks.extproc_load import drive
from benchmarks.run import cpu_seconds, long_prompts, prompts, resident_mib
from sidecar.core.decision import ProviderSnapshot
from sidecar.core.request import CHARS_PER_TOKEN, bound_routing_text
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import RoutingService
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE


def test_long_prompts_are_about_500_tokens_and_distinct_where_the_router_looks() -> None:
    texts = long_prompts(50, seed=3)
    tokens = [len(text) / CHARS_PER_TOKEN for text in texts]
    assert min(tokens) >= 400 and max(tokens) <= 650
    # The routing text keeps only the head and tail: they must differ, or the cache answers.
    assert len({bound_routing_text(text) for text in texts}) == len(texts)
    assert long_prompts(50, seed=3) == texts  # seeded: every run sends the same prompts


def test_short_prompts_are_about_30_tokens() -> None:
    tokens = [len(text) / CHARS_PER_TOKEN for text in prompts(50, seed=3)]
    assert min(tokens) >= 15 and max(tokens) <= 40


def test_cpu_seconds_and_memory_of_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # some CPU work, well over one clock tick
    assert cpu_seconds(os.getpid()) > before
    assert resident_mib(os.getpid(), "VmHWM") >= resident_mib(os.getpid()) > 0


@pytest.fixture
async def target() -> AsyncIterator[str]:
    service = RoutingService(
        table=TWO_TIER_TABLE, catalogue=TWO_TIER_CATALOGUE, snapshot=ProviderSnapshot
    )
    server = grpc.aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(service, RouterMetrics()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_drive_sends_every_prompt_unless_its_time_is_up(target: str) -> None:
    everything = await drive(target, prompts(12, seed=1), 3)
    assert len(everything.latencies) == 12 and everything.failures == 0
    explicit = await drive(target, prompts(4, seed=1), 2, model="tiny-1b")
    assert len(explicit.latencies) == 4 and explicit.failures == 0
    # No time at all: not one prompt is sent, however many were given.
    nothing = await drive(target, prompts(12, seed=1), 3, seconds=0.0)
    assert nothing.latencies == () and nothing.failures == 0

"""The sidecar's readiness: /readyz and gRPC health say SERVING when loaded, not while draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config.settings import Settings
from sidecar.devstack.extproc_client import headers_message
from sidecar.serving.server import start_sidecar

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings.model_validate(
    {
        "envoy_config": ROOT / "envoy" / "local.yaml",
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "semantic": {"enabled": False},
    }
)


async def _readyz(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/readyz") as reply:
        return reply.status


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    # types-grpcio-health-checking declares HealthStub without its methods.
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
    return int(reply.status)


async def test_ready_when_started_and_not_ready_while_draining() -> None:
    sidecar = await start_sidecar(SETTINGS)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    release = asyncio.Event()

    async def envoy_mid_request() -> AsyncIterator[ext.ProcessingRequest]:
        yield headers_message("/v1/chat/completions")
        await release.wait()  # the body never comes until the test says so

    async with aiohttp.ClientSession() as session:
        assert await _readyz(session, sidecar.admin_port) == 200
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stream = ext_grpc.ExternalProcessorStub(channel).Process(envoy_mid_request(), timeout=10)
        assert (await stream.read()).HasField("request_headers")  # the stream is open
        stopping = asyncio.create_task(sidecar.stop(grace_s=10))
        await asyncio.sleep(0)  # stop() has begun: the open stream holds the drain
        assert await _readyz(session, sidecar.admin_port) == 503
        assert not stopping.done()
        release.set()
        stream.cancel()
        await stopping
    await channel.close()

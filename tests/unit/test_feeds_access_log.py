"""Envoy's access-log stream, replayed from a recording, into the learner and the decisions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import text_format

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.config.settings import Settings
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.feeds.access_log import AccessLogReceiver, observation_of
from sidecar.feeds.passive import Observation, PassiveLearner
from sidecar.serving.server import start_sidecar

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "fixtures" / "envoy_upstream_log.textproto"
CATALOGUE = Catalogue(
    providers=(
        Provider("a", "llama", "mid", Price(0.59, 0.79), ttft_s=0.15),
        Provider("b", "llama", "mid", Price(0.88, 0.88), ttft_s=0.09),
    ),
    clusters=frozenset({"a", "b"}),
)


def recorded() -> list[Any]:
    """The StreamAccessLogsMessages Envoy sent, in order (see the fixture's header)."""
    chunks = RECORDING.read_text().split("\n# message\n")[1:]
    return [text_format.Parse(chunk, als_pb2.StreamAccessLogsMessage()) for chunk in chunks]


def entries() -> list[Any]:
    return [entry for message in recorded() for entry in message.http_logs.log_entry]


def test_each_recorded_attempt_becomes_an_observation() -> None:
    seen = [observation_of(entry) for entry in entries()]
    assert [(s.cluster, s.status) for s in seen if s is not None] == [
        ("a", 429), ("b", 200), ("a", 200), ("a", 503), ("b", 503), ("a", 503),
    ]  # fmt: skip
    rate_limited = seen[0]
    assert rate_limited is not None and rate_limited.headers == {
        "retry-after": "3",
        "x-ratelimit-remaining-requests": "260",
    }
    # First byte: from the first byte sent to the first byte back (0.823 - 0.053 ms).
    assert rate_limited.first_byte_s == pytest.approx(0.000770501)
    assert rate_limited.ended_at == pytest.approx(1795950098.718937 + 0.000913834)
    assert not rate_limited.stream and not rate_limited.upstream_fault
    streamed = seen[2]
    assert streamed is not None and streamed.stream


def test_entries_that_are_not_upstream_attempts_are_skipped() -> None:
    listener = accesslog_pb2.HTTPAccessLogEntry()
    listener.CopyFrom(entries()[1])
    listener.common_properties.access_log_type = accesslog_pb2.AccessLogType.Value("DownstreamEnd")
    assert observation_of(listener) is None
    no_cluster = accesslog_pb2.HTTPAccessLogEntry()
    no_cluster.CopyFrom(entries()[1])
    no_cluster.common_properties.upstream_cluster = ""
    assert observation_of(no_cluster) is None


def test_an_attempt_with_no_answer_is_the_upstreams_fault_only_when_envoy_says_so() -> None:
    reset = accesslog_pb2.HTTPAccessLogEntry()
    reset.CopyFrom(entries()[0])
    reset.response.ClearField("response_code")
    reset.common_properties.ClearField("time_to_first_upstream_rx_byte")
    reset.common_properties.response_flags.upstream_remote_reset = True
    seen = observation_of(reset)
    assert seen is not None and seen.status == 0 and seen.upstream_fault
    assert seen.first_byte_s is None
    reset.common_properties.response_flags.upstream_remote_reset = False
    reset.common_properties.response_flags.downstream_connection_termination = True
    gone = observation_of(reset)
    assert gone is not None and not gone.upstream_fault


class _Recorder(PassiveLearner):
    """A learner that also keeps what it was told."""

    def __init__(self) -> None:
        super().__init__(CATALOGUE)
        self.heard: list[tuple[Observation, float]] = []

    def observe(self, seen: Observation, now: float) -> str | None:
        self.heard.append((seen, now))
        return super().observe(seen, now)


async def _serve(receiver: AccessLogReceiver) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def _send(messages: Iterable[Any], hold: asyncio.Event | None = None) -> AsyncIterator[Any]:
    for message in messages:
        yield message
    if hold is not None:
        await hold.wait()  # Envoy keeps its stream open


async def test_the_servicer_feeds_every_recorded_attempt_to_the_learner() -> None:
    learner = _Recorder()
    receiver = AccessLogReceiver(learner, clock=lambda: 50.0)
    server, channel = await _serve(receiver)
    try:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        await stub.StreamAccessLogs(_send(recorded()), timeout=10)
    finally:
        await channel.close()
        await server.stop(None)
    assert [seen.status for seen, _ in learner.heard] == [429, 200, 200, 503, 503, 503]
    assert {now for _, now in learner.heard} == {50.0}
    assert receiver.entries == 6 and receiver.skipped == 0
    signals = learner.signals(52.9)
    assert signals["a"].avoid  # 429 with retry-after 3, heard at 50.0
    assert signals["a"].notes[0] == "429 from provider: avoided for 0.1 s more (retry-after)"
    assert not learner.signals(53.0)["a"].avoid
    assert not signals["b"].avoid  # one 503 after a 200 is not a run


async def test_a_malformed_entry_is_skipped_and_the_stream_goes_on() -> None:
    learner = _Recorder()
    receiver = AccessLogReceiver(learner, clock=lambda: 0.0)
    broken = als_pb2.StreamAccessLogsMessage()
    broken.http_logs.log_entry.add()  # no type, no cluster: not an attempt
    receiver.receive(object())  # not an entry at all
    server, channel = await _serve(receiver)
    try:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)
        await stub.StreamAccessLogs(_send([broken, *recorded()]), timeout=10)
    finally:
        await channel.close()
        await server.stop(None)
    assert receiver.skipped == 2 and receiver.entries == 6


def _settings() -> Settings:
    return Settings.model_validate(
        {
            "envoy_config": ROOT / "envoy" / "local.yaml",
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "semantic": {"enabled": False},
            "envoy_health": {"enabled": False},
            "load_feed": {"enabled": False},
        }
    )


def _as_cluster(cluster: str, message: Any) -> Any:
    renamed = als_pb2.StreamAccessLogsMessage()
    renamed.CopyFrom(message)
    for entry in renamed.http_logs.log_entry:
        entry.common_properties.upstream_cluster = cluster
    return renamed


async def test_the_sidecar_avoids_a_provider_its_access_log_saw_answer_429() -> None:
    sidecar = await start_sidecar(_settings())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    router = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    request = router_pb2.DecideRequest(body=body.encode())
    hold = asyncio.Event()
    stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        chosen = (await router.Decide(request, timeout=5)).upstream
        other = {"sim-mid-a": "sim-mid-b", "sim-mid-b": "sim-mid-a"}[chosen]
        rate_limited = _as_cluster(chosen, recorded()[0])  # 429, retry-after 3
        stream = als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(
            _send([rate_limited], hold), timeout=30
        )
        for _ in range(200):  # the entry is handled on the sidecar's loop: give it turns
            decision = await router.Decide(request, timeout=5)
            if decision.upstream != chosen:
                break
        assert decision.upstream == other
        reason = decision.explanation.reason
        assert "429 from provider: avoided for" in reason.split(f"{chosen}: ", 1)[1]
        # Envoy's log stream never ends by itself: stopping must not wait out the grace.
        stopping = asyncio.ensure_future(sidecar.stop(grace_s=60))
        assert (await asyncio.wait_for(stream, timeout=20)) == als_pb2.StreamAccessLogsResponse()
        await asyncio.wait_for(stopping, timeout=20)
    finally:
        hold.set()
        await channel.close()
        if not stopping.done():
            await sidecar.stop(grace_s=0)

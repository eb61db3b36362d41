"""What tracing costs a decision: the ext_proc exchange with tracing off and on, side by side.

Two routing services run in this process, each behind its own gRPC server, identical but
for tracing: one off (the default: no SDK loaded, a shared null span), one on with every
decision sampled and its spans batch-exported over OTLP/gRPC to a collector that runs in
this process too and drops what it receives. Both are driven the way Envoy drives
ext_proc (headers, then the buffered body, a `traceparent` in the stream's metadata), in
alternating rounds, so a noisy neighbour on the machine weighs on both alike. No semantic
classifier: what is measured is the tracing, not MiniLM. Prints medians of the rounds and
their ratio; writes bench-results/tracing.json.

Run: .venv/bin/python -m benchmarks.tracing_cost
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import ProviderSnapshot, RoutingTable
from sidecar.devstack.extproc_client import chat_request, exchange
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import RoutingService
from sidecar.serving.tracing import Tracing, stage_timer, start_tracing

ROUNDS = 9
PER_ROUND = 400
OUT = Path("bench-results/tracing.json")
CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.1)),
        Provider("big", "big-1t", "frontier", Price(5.0, 15.0)),
    ),
    clusters=frozenset({"tiny", "big"}),
)
# What Envoy puts in the ext_proc stream's metadata when it traces the request.
ENVOY_CONTEXT = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)


class DroppingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that counts the spans it is sent and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(
            len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def _sidecar(tracing: Tracing) -> tuple[grpc.aio.Server, int]:
    metrics = RouterMetrics()
    service = RoutingService(
        table=RoutingTable(tiers=("small", "frontier"), default_route="small"),
        catalogue=CATALOGUE,
        snapshot=ProviderSnapshot,
        stage_timer=stage_timer(tracing.tracer, metrics.stage_seconds),
    )
    server = grpc.aio.server()
    processor = ExternalProcessor(service, metrics, tracer=tracing.tracer)
    ext_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _round(stub: ext_grpc.ExternalProcessorStub, n: int) -> float:
    """Microseconds per decision over `n` sequential exchanges."""
    started = time.perf_counter()
    for i in range(n):
        await exchange(stub, chat_request(f"hello number {i}"), metadata=ENVOY_CONTEXT)
    return (time.perf_counter() - started) / n * 1e6


async def measure() -> dict[str, Any]:
    """Both sidecars, the alternating rounds, and the report."""
    collector = DroppingCollector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)  # type: ignore[no-untyped-call]
    receiver_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    off = start_tracing({})
    on = start_tracing(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
            "OTEL_TRACES_SAMPLER": "always_on",
        }
    )
    servers = {"off": await _sidecar(off), "on": await _sidecar(on)}
    results: dict[str, list[float]] = {"off": [], "on": []}
    try:
        channels = {
            mode: grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            for mode, (_, port) in servers.items()
        }
        stubs = {mode: ext_grpc.ExternalProcessorStub(ch) for mode, ch in channels.items()}
        for mode in stubs:  # warm-up: connections, first-use imports
            await _round(stubs[mode], 100)
        for _ in range(ROUNDS):
            for mode in ("off", "on"):
                results[mode].append(await _round(stubs[mode], PER_ROUND))
        for ch in channels.values():
            await ch.close()
    finally:
        for server, _ in servers.values():
            await server.stop(0)
        # Flushes what is still queued, to a collector served by this very loop.
        await asyncio.to_thread(on.shutdown)
        await receiver.stop(0)
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    report = {
        "us_per_decision_median": {mode: round(v, 1) for mode, v in medians.items()},
        "rounds_us": {mode: [round(v, 1) for v in values] for mode, values in results.items()},
        "ratio_on_vs_off": round(medians["on"] / medians["off"], 3),
        "spans_received": collector.spans,
        "decisions_traced": ROUNDS * PER_ROUND + 100,
    }
    return report


def main() -> None:
    report = asyncio.run(measure())
    medians = report["us_per_decision_median"]
    print(
        f"tracing cost, ext_proc exchange over gRPC, {ROUNDS} alternating rounds of "
        f"{PER_ROUND}: off {medians['off']:.0f} us, on (100 % sampled, OTLP export) "
        f"{medians['on']:.0f} us per decision, ratio {report['ratio_on_vs_off']}; "
        f"{report['spans_received']} spans received"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

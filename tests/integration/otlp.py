"""An OTLP/gRPC trace receiver for integration tests: a stand-in for Jaeger or a collector.

It keeps every span it is sent, with the `service.name` of the resource that sent it,
and lets a test wait (bounded) for a trace that holds what it expects.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span and the service that sent it."""

    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attributes(self) -> dict[str, object]:
        return {kv.key: attribute_value(kv.value) for kv in self.span.attributes}


def attribute_value(value: common_pb2.AnyValue) -> object:
    """An OTLP attribute value as plain Python (lists and dicts for arrays and key lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: attribute_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._arrived = threading.Condition()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    kv.value.string_value
                    for kv in resource_spans.resource.attributes
                    if kv.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                received += [ReceivedSpan(service, span) for span in scope.spans]
        with self._arrived:
            self._spans += received
            self._arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for_trace(self, done: object, timeout_s: float) -> list[ReceivedSpan]:
        """The spans of the first trace for which `done(spans)` holds; [] after the timeout."""
        assert callable(done)
        found: list[ReceivedSpan] = []

        def complete() -> bool:
            nonlocal found
            for trace_id in {s.trace_id for s in self._spans}:
                spans = [s for s in self._spans if s.trace_id == trace_id]
                if done(spans):
                    found = spans
                    return True
            return False

        with self._arrived:
            self._arrived.wait_for(complete, timeout=timeout_s)
        return found

    def all_spans(self) -> list[ReceivedSpan]:
        with self._arrived:
            return list(self._spans)


@contextmanager
def running_receiver() -> Iterator[tuple[TraceReceiver, int]]:
    """A receiver serving on a loopback port chosen now: (receiver, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = TraceReceiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)

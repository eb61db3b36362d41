"""Tracing: off unless the OTel variables ask; the decision span continues Envoy's trace.

The spans go to the SDK's in-memory exporter; the ext_proc adapter runs over real gRPC on
loopback, with the `traceparent` Envoy would put in the stream's metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.core.decision import ProviderSnapshot
from sidecar.core.vote import STAGE_MODEL, Neighbour, RouteVerdict
from sidecar.devstack.extproc_client import body_message, chat_request, exchange, headers_message
from sidecar.devstack.stack import OTEL_CLUSTER, enable_tracing, otlp_address
from sidecar.errors import ConfigError
from sidecar.serving.extproc import ExternalProcessor
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import Routed, RoutingService
from sidecar.serving.tracing import (
    DecisionTracer,
    decision_attributes,
    parent_context,
    service_name,
    stage_timer,
    start_tracing,
    tracing_requested,
)
from tests.fakes import TWO_TIER_CATALOGUE, TWO_TIER_TABLE

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
ENVOY_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{ENVOY_SPAN_ID}-01"
PROMPT = "a distinctive prompt about wombats"
VERDICT = RouteVerdict(
    route="small",
    scores={"small": 0.9, "frontier": 0.1},
    confidence=0.9,
    best_similarity=0.8,
    margin=0.8,
    threshold=0.25,
    abstain_reason=None,
    neighbours=tuple(Neighbour("small", 0.9 - i / 100, 20) for i in range(8)),
    predicted_output_tokens=20.0,
    stage=STAGE_MODEL,
)


class FakeClassifier:
    """Always the same verdict, timed as one `embed` stage like the real one."""

    def __init__(self, tracer: DecisionTracer) -> None:
        self._tracer = tracer

    async def classify(self, text: str) -> RouteVerdict:
        with self._tracer.stage("embed"):
            return VERDICT


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "console"},
            False,
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(
    env: dict[str, str], expected: bool
) -> None:
    assert tracing_requested(env) is expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "inference-router"),
        ({"OTEL_SERVICE_NAME": "router-eu"}, "router-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team=ml, service.name=router%20b"}, "router b"),
        ({"OTEL_SERVICE_NAME": "a", "OTEL_RESOURCE_ATTRIBUTES": "service.name=b"}, "a"),
    ],
)
def test_the_service_name_follows_the_standard_variables(
    env: dict[str, str], expected: str
) -> None:
    assert service_name(env) == expected


def test_off_by_default_is_a_null_context_without_spans() -> None:
    tracing = start_tracing({})
    assert not tracing.tracer.enabled
    with tracing.tracer.decision((("traceparent", TRACEPARENT),)) as span:
        assert span is None
    with tracing.tracer.stage("embed") as stage:
        assert stage is None
    tracing.shutdown()


def test_on_with_an_endpoint_exports_over_otlp_and_shuts_down() -> None:
    # No collector listens there: nothing is exported before the shutdown, which is bounded.
    tracing = start_tracing(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "router-a"}
    )
    assert tracing.tracer.enabled
    assert not tracing.tracer.capture_content
    tracing.shutdown()


def test_the_parent_comes_from_the_grpc_metadata() -> None:
    context = parent_context((("x-other", "1"), ("traceparent", TRACEPARENT.encode())))
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("child", context=context):
        pass
    with provider.get_tracer("t").start_as_current_span("root", context=parent_context(None)):
        pass
    child, root = exporter.get_finished_spans()
    assert child.context is not None and child.context.trace_id == int(TRACE_ID, 16)
    assert child.parent is not None and child.parent.span_id == int(ENVOY_SPAN_ID, 16)
    assert root.parent is None  # no metadata: a trace of its own


def test_a_stage_timer_records_the_duration_and_a_child_span() -> None:
    provider, exporter = _provider()
    tracer = DecisionTracer(provider.get_tracer("t"))
    seen: list[tuple[str, float]] = []
    timer = stage_timer(tracer, lambda stage, seconds: seen.append((stage, seconds)))
    with tracer.decision(()), timer("search"):
        pass
    with timer("parse"):  # outside a decision span (the Decide API): timed, not spanned
        pass
    assert [stage for stage, _ in seen] == ["search", "parse"]
    assert seen[0][1] >= 0
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["router.search", "router.decision"]
    untraced: list[str] = []
    with stage_timer(DecisionTracer(None), lambda stage, _: untraced.append(stage))("parse"):
        pass
    assert untraced == ["parse"]  # the histogram is fed with tracing off too


@pytest.fixture
def spans() -> Iterator[tuple[DecisionTracer, InMemorySpanExporter]]:
    provider, exporter = _provider()
    yield DecisionTracer(provider.get_tracer("t")), exporter
    provider.shutdown()


@pytest.fixture
async def stub(
    spans: tuple[DecisionTracer, InMemorySpanExporter],
) -> AsyncIterator[ext_grpc.ExternalProcessorStub]:
    tracer, _ = spans
    metrics = RouterMetrics()
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=FakeClassifier(tracer),
        stage_timer=stage_timer(tracer, metrics.stage_seconds),
    )
    server = grpc.aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(service, metrics, tracer=tracer), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield ext_grpc.ExternalProcessorStub(channel)
    await server.stop(0)


async def test_the_decision_span_is_a_child_of_envoys_span(
    stub: ext_grpc.ExternalProcessorStub, spans: tuple[DecisionTracer, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    await exchange(
        stub,
        chat_request(PROMPT, headers={"authorization": "Bearer sk-test-SECRET"}),
        metadata=(("traceparent", TRACEPARENT),),
    )
    finished = {span.name: span for span in exporter.get_finished_spans()}
    decision = finished["router.decision"]
    assert f"{decision.context.trace_id:032x}" == TRACE_ID
    assert decision.parent is not None and f"{decision.parent.span_id:016x}" == ENVOY_SPAN_ID
    for stage in ("router.parse", "router.embed", "router.policy"):
        child = finished[stage]
        assert child.parent is not None and child.parent.span_id == decision.context.span_id
    attributes = dict(decision.attributes or {})
    assert attributes["router.upstream"] == "tiny"
    assert attributes["router.route"] == "small"
    assert attributes["router.policy"] == "balanced"
    assert attributes["gen_ai.request.model"] == "tiny-1b"
    assert attributes["router.client_model"] == "auto"
    assert attributes["router.neighbours.routes"] == ("small",) * 5  # the top 5 of 8
    assert attributes["router.confidence"] == pytest.approx(0.9)
    assert attributes["router.classifier_stage"] == "routed"
    assert "tiny" in attributes["router.candidates.clusters"]  # type: ignore[operator]
    _assert_no_secrets(exporter.get_finished_spans())


async def test_a_rejected_request_is_marked_on_its_span(
    stub: ext_grpc.ExternalProcessorStub, spans: tuple[DecisionTracer, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    messages = [headers_message("/v1/chat/completions"), body_message(b"{oops")]
    await exchange(stub, messages, metadata=(("traceparent", TRACEPARENT),))
    (decision,) = [s for s in exporter.get_finished_spans() if s.name == "router.decision"]
    assert (decision.attributes or {})["router.rejected"] == "invalid_json"


async def test_prompt_text_only_when_the_operator_asks() -> None:
    routed = await _routed()
    quiet = decision_attributes(routed, "routed", capture_content=False)
    assert PROMPT not in repr(quiet)
    loud = decision_attributes(routed, "routed", capture_content=True)
    assert loud["router.routing_text"] == PROMPT


async def test_attributes_of_a_decision_without_a_classifier() -> None:
    routed = await _routed(with_classifier=False)
    attributes = decision_attributes(routed, "unused", capture_content=False)
    assert "router.confidence" not in attributes
    assert attributes["router.classifier_stage"] == "unused"
    assert attributes["gen_ai.operation.name"] == "chat"


def test_the_local_stack_renders_envoys_tracer_only_for_an_endpoint() -> None:
    assert otlp_address("http://127.0.0.1:4317") == ("127.0.0.1", 4317)
    assert otlp_address("collector:4318") == ("collector", 4318)
    assert otlp_address("http://jaeger") == ("jaeger", 4317)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp_address("https://collector:4317")
    config: dict[str, object] = {
        "static_resources": {
            "listeners": [
                {
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {"stat_prefix": "x"},
                                }
                            ]
                        }
                    ]
                }
            ],
            "clusters": [],
        }
    }
    enable_tracing(config, "127.0.0.1", 4317)
    static = config["static_resources"]
    assert isinstance(static, dict)
    typed = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed["tracing"]["random_sampling"] == {"value": 100}
    assert typed["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    (cluster,) = static["clusters"]
    assert cluster["name"] == OTEL_CLUSTER
    assert "port_value: 4317" not in repr(cluster)  # a dict, not text
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _routed(*, with_classifier: bool = True) -> Routed:
    service = RoutingService(
        table=TWO_TIER_TABLE,
        catalogue=TWO_TIER_CATALOGUE,
        snapshot=ProviderSnapshot,
        classifier=FakeClassifier(DecisionTracer(None)) if with_classifier else None,
    )
    body = chat_request(PROMPT)[1].request_body.body
    return await service.route("/v1/chat/completions", {}, body)


def _assert_no_secrets(finished: tuple[ReadableSpan, ...]) -> None:
    for span in finished:
        text = repr(dict(span.attributes or {})) + repr([e.attributes for e in span.events])
        assert PROMPT not in text
        assert "sk-test-SECRET" not in text

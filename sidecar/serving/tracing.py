"""OpenTelemetry tracing of decisions: the decision span inside Envoy's own trace.

Envoy's ext_proc filter opens its gRPC stream to the sidecar from a child span of the
request's span ("async envoy.service.ext_proc.v3.ExternalProcessor.Process egress") and,
with Envoy's OpenTelemetry tracer, writes that span's W3C `traceparent` into the stream's
gRPC initial metadata. The sidecar reads it back with the W3C TraceContext propagator and
starts its `router.decision` span as that span's child, with one child span per stage
(parse, stage1, embed, search, policy), so one trace holds the whole request: Envoy
ingress, the router's decision, the upstream call to the provider.

Off unless asked, and then nearly free: tracing starts only when the standard OTel
variables ask for an OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, not overridden by `OTEL_TRACES_EXPORTER=none` or
`OTEL_SDK_DISABLED=true`). Off, `DecisionTracer.span` is a shared null context: no OTel
object is made per request. On, spans go to a BatchSpanProcessor (a queue and a worker
thread), so export never sits on the request path; the SDK itself reads the endpoint,
`OTEL_SERVICE_NAME` (default here: inference-router), `OTEL_TRACES_SAMPLER` (default
parentbased_always_on: the sidecar follows Envoy's sampling decision) and the batch
settings (`OTEL_BSP_*`). The provider is ours, never the process-global one, and is shut
down (flushed) when the sidecar stops.

Attributes follow the OpenTelemetry GenAI conventions where they fit
(`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.request.max_tokens`) and
`router.*` for the rest. The sidecar never sees the response, so `gen_ai.response.*` and
`gen_ai.usage.*` are not here; the estimates it routed on are (`router.prompt_tokens_estimate`,
`router.predicted_output_tokens`). The routing text is recorded only when the operator sets
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (the GenAI instrumentations'
switch for the same thing); headers are never recorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from sidecar.core.decision import CandidateCost
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.semantic.classifier import StageTimer
from sidecar.serving.service import Routed

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "inference-router"
SERVICE_NAME_KEY = "service.name"
DECISION_SPAN = "router.decision"
CAPTURE_CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# Spans carry this many nearest neighbours; the vote may use more (k).
TOP_NEIGHBOURS = 5
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# The W3C trace headers: in the ext_proc streams' gRPC metadata, and on a cascade's escalation.
TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
_OPERATIONS = {Endpoint.CHAT: "chat", Endpoint.COMPLETIONS: "text_completion"}

Attributes = dict[str, AttributeValue]


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the OTel variables in `env` ask for traces to be exported over OTLP."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if "otlp" not in {name.strip() for name in exporters.split(",")}:
        return False  # "none", or an exporter this sidecar does not ship
    return any(env.get(name, "").strip() for name in _ENDPOINT_VARIABLES)


def capture_content(env: Mapping[str, str]) -> bool:
    """Whether the operator asked for prompt text in spans (off unless set to true)."""
    return env.get(CAPTURE_CONTENT_VARIABLE, "").strip().lower() == "true"


@dataclass(frozen=True)
class Tracing:
    """The sidecar's tracer (a no-op one when off) and how to flush it on stop."""

    tracer: DecisionTracer
    shutdown: Callable[[], None]


def start_tracing(env: Mapping[str, str]) -> Tracing:
    """Tracing as the environment asks: OTLP/gRPC batch export, or off."""
    if not tracing_requested(env):
        return Tracing(DecisionTracer(None), lambda: None)
    # Imported only when on: the SDK and the exporter add ~40 ms to start-up.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES, but an attribute given here beats
    # the variables, so the service name is chosen here. The SDK reads the sampler, the
    # exporter's headers, timeout and TLS, and OTEL_BSP_* from the process environment.
    resource = Resource.create({SERVICE_NAME: service_name(env)})
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    exporter = OTLPSpanExporter(endpoint=_endpoint(env))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("sidecar.serving")
    log.info("tracing on: OTLP export to %s", _endpoint(env))
    return Tracing(DecisionTracer(tracer, capture_content=capture_content(env)), provider.shutdown)


def service_name(env: Mapping[str, str]) -> str:
    """OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES, else ours."""
    named = env.get("OTEL_SERVICE_NAME", "").strip()
    if named:
        return named
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == SERVICE_NAME_KEY and value.strip():
            return urllib.parse.unquote(value.strip())
    return DEFAULT_SERVICE_NAME


def _endpoint(env: Mapping[str, str]) -> str:
    # The traces-only variable wins over the general one, as in the SDK.
    for name in reversed(_ENDPOINT_VARIABLES):
        if env.get(name, "").strip():
            return env[name].strip()
    return "(default)"


def parent_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context Envoy put in the gRPC metadata (an empty one when there is none)."""
    carrier: dict[str, str] = {}
    for name, value in metadata or ():
        if name in TRACE_HEADERS:
            carrier[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return _PROPAGATOR.extract(carrier)


class DecisionTracer:
    """Starts decision and stage spans; with no tracer, every call is a shared null context."""

    def __init__(self, tracer: trace.Tracer | None, *, capture_content: bool = False) -> None:
        self._tracer = tracer
        self.capture_content = capture_content

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded at all."""
        return self._tracer is not None

    def decision(
        self, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> AbstractContextManager[trace.Span | None]:
        """The decision span, a child of the Envoy span named in the gRPC metadata."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(
            DECISION_SPAN, context=parent_context(metadata), kind=trace.SpanKind.SERVER
        )

    def stage(self, name: str) -> AbstractContextManager[object]:
        """A child span of the current decision span for one stage of it.

        Only inside a recorded span: a decision made for the Decide API or /explain has
        no decision span, and its stages must not become traces of their own.
        """
        if self._tracer is None or not trace.get_current_span().is_recording():
            return _NO_SPAN
        return self._tracer.start_as_current_span(f"router.{name}")


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


def stage_timer(tracer: DecisionTracer, observe: Callable[[str, float], None]) -> StageTimer:
    """A StageTimer that spans each stage when tracing and always records its duration."""
    return lambda name: _TimedStage(name, observe, tracer.stage(name))


class _TimedStage:
    """One stage: its span (or the null context) around a perf_counter reading.

    A class, not @contextmanager: a generator per stage cost ~1 µs more, per stage, on
    every decision, tracing or not.
    """

    __slots__ = ("_name", "_observe", "_span", "_started")

    def __init__(
        self,
        name: str,
        observe: Callable[[str, float], None],
        span: AbstractContextManager[object],
    ) -> None:
        self._name = name
        self._observe = observe
        self._span = span
        self._started = 0.0

    def __enter__(self) -> None:
        self._span.__enter__()
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._observe(self._name, time.perf_counter() - self._started)
        return self._span.__exit__(kind, error, traceback)


def decision_attributes(routed: Routed, classifier: str, *, capture_content: bool) -> Attributes:
    """What a decision span says about one decision: what was chosen, and why."""
    decision, verdict, facts = routed.decision, routed.verdict, routed.facts
    attributes: Attributes = {
        "gen_ai.request.model": decision.model,
        "router.decision_id": decision.decision_id,
        "router.route": decision.route,
        "router.tier": decision.tier,
        "router.policy": decision.policy.value,
        "router.upstream": decision.upstream,
        "router.model_rewritten": decision.model_rewritten,
        "router.reason": decision.reason,
        "router.classifier_stage": classifier,
        "router.predicted_output_tokens": decision.predicted_output_tokens,
    }
    if facts is not None:
        attributes.update(_facts_attributes(facts, capture_content))
    if verdict is not None:
        attributes["router.confidence"] = verdict.confidence
        attributes["router.margin"] = verdict.margin
        if verdict.abstain_reason is not None:
            attributes["router.abstain_reason"] = verdict.abstain_reason
        top = verdict.neighbours[:TOP_NEIGHBOURS]
        attributes["router.neighbours.routes"] = [n.route for n in top]
        attributes["router.neighbours.similarities"] = [round(n.similarity, 4) for n in top]
    attributes.update(_candidate_attributes(decision.candidates))
    return attributes


def _facts_attributes(facts: RequestFacts, capture_content: bool) -> Attributes:
    attributes: Attributes = {
        "gen_ai.operation.name": _OPERATIONS.get(facts.endpoint, facts.endpoint.value),
        "router.client_model": facts.model,
        "router.prompt_tokens_estimate": facts.prompt_tokens,
        "router.stream": facts.stream,
    }
    if facts.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = facts.max_tokens
    if capture_content:
        attributes["router.routing_text"] = facts.routing_text
    return attributes


def _candidate_attributes(candidates: Sequence[CandidateCost]) -> Attributes:
    # Parallel arrays (OTel attributes hold primitives or arrays of them); the notes carry
    # the feeds' ages ("3 waiting (0.4 s old)", "price from ... (2 s old)").
    return {
        "router.candidates.clusters": [c.cluster for c in candidates],
        "router.candidates.expected_cost_usd": [c.expected_cost_usd for c in candidates],
        "router.candidates.expected_latency_s": [
            round(c.expected_latency_s, 4) for c in candidates
        ],
        "router.candidates.healthy": [c.healthy for c in candidates],
        "router.candidates.notes": ["; ".join(c.notes) for c in candidates],
    }

"""Envoy ext_proc adapter: the ExternalProcessor gRPC service in front of RoutingService.

Envoy opens one bidirectional stream per HTTP request. With the shipped config
(`request_header_mode: SKIP`, `request_body_mode: BUFFERED`) it sends one message: the
whole body, with the path and the few headers the router reads as attributes. (With
`request_header_mode: SEND` the headers come first; we answer CONTINUE and remember
them.) The decision is the body's answer: its headers as dynamic metadata, which Envoy's
edge script sets on the request (so Envoy matches the route again), and a `model`
rewrite as a body mutation. A bad request gets an ImmediateResponse with an OpenAI-style
error body; GET /v1/models, which has no body, comes with its headers. Nothing here
decides anything; it only translates between Envoy's messages and the service. Each
decision runs in a `router.decision` span continuing the trace Envoy passes in the
stream's gRPC metadata (sidecar/serving/tracing.py), when tracing is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from opentelemetry.trace import Span

from sidecar.config.envoy import DECISION_NAMESPACE
from sidecar.core.request import MODELS_PATH, endpoint_for_path
from sidecar.core.vote import FAILED, SHED, STAGE_STATIC
from sidecar.errors import RequestError
from sidecar.serving.body import BIG_BODY_BYTES
from sidecar.serving.cascade import Cascade, Prepared, Ticket
from sidecar.serving.cascade_filter import CASCADE_FILTER, FILTER_METADATA, CascadeFilter
from sidecar.serving.envoy_headers import headers_from_attributes, headers_to_dict, set_header
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import (
    ROUTE_CASCADE_METADATA,
    ROUTE_POLICY_METADATA,
    Routed,
    RoutingService,
    new_decision_id,
)
from sidecar.serving.statuses import http_status, openai_error_body
from sidecar.serving.tracing import DecisionTracer, decision_attributes

Metadata = tuple[tuple[str, str | bytes], ...]

log = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-router-upstream"
ROUTE_HEADER = "x-router-route"
DECISION_HEADER = "x-router-decision-id"
MODEL_HEADER = "x-router-model"


def decision_response(routed: Routed, cascade: Prepared | None = None) -> ext.ProcessingResponse:
    """The body-phase answer that routes the request where the decision says.

    The decision's headers go back as dynamic metadata (namespace `inference_router`):
    Envoy sent no headers phase, so a header mutation here would be dropped, and its edge
    script sets them on the request, which makes Envoy match the route again. A changed
    body (the `model` rewrite, logprobs for a cascade) is a body mutation; the script gives
    it its new length. A cascading request also gets the header that selects the cascade
    route.
    """
    decision = routed.decision
    response = ext.ProcessingResponse()
    response.request_body.SetInParent()
    headers = response.dynamic_metadata.fields[DECISION_NAMESPACE].struct_value.fields
    headers[UPSTREAM_HEADER].string_value = decision.upstream
    headers[ROUTE_HEADER].string_value = decision.route
    headers[DECISION_HEADER].string_value = decision.decision_id
    headers[MODEL_HEADER].string_value = decision.model
    body = routed.body
    if cascade is not None:
        for name, value in cascade.set_headers:
            headers[name].string_value = value
        body = cascade.body if cascade.body is not None else body
    if body is not None:
        response.request_body.response.body_mutation.body = body
    return response


def classifier_outcome(routed: Routed) -> str:
    """A metric label: what the semantic classifier contributed to a decision.

    `routed`/`abstained` on the encoder (stage 2), `stage1_routed`/`stage1_abstained`
    when stage 1 was confident, `shed_stage1_*` when stage 1 decided because the encoder
    was overloaded, `shed` when nothing could classify it (default route).
    """
    verdict = routed.verdict
    if verdict is None:
        return "unused"
    if verdict.abstain_reason == SHED:
        return "shed"
    if verdict.abstain_reason == FAILED:
        return "error"
    outcome = "routed" if verdict.route is not None else "abstained"
    if verdict.stage == STAGE_STATIC:
        return f"shed_stage1_{outcome}" if verdict.overloaded else f"stage1_{outcome}"
    return outcome


def _json_reply(status: int, body: bytes, details: str) -> ext.ProcessingResponse:
    """An immediate JSON reply from the router: the request never reaches a provider."""
    response = ext.ProcessingResponse()
    reply = response.immediate_response
    reply.status.code = status
    set_header(reply.headers.set_headers, "content-type", "application/json")
    reply.body = body
    reply.details = details
    return response


def error_response(error: RequestError) -> ext.ProcessingResponse:
    """An immediate OpenAI-style error reply; the request never reaches a provider."""
    return _json_reply(
        http_status(error), openai_error_body(error), f"inference_router_{error.code}"
    )


def models_response(body: bytes) -> ext.ProcessingResponse:
    """An immediate `200` with the model list: the router, not one provider, answers it."""
    return _json_reply(200, body, "inference_router_models")


_CONTINUE_HEADERS = ext.ProcessingResponse(request_headers=ext.HeadersResponse())


def _passthrough(phase: str) -> ext.ProcessingResponse:
    """An empty answer for a phase the router does not act on."""
    if phase == "response_headers":
        return ext.ProcessingResponse(response_headers=ext.HeadersResponse())
    if phase == "response_body":
        return ext.ProcessingResponse(response_body=ext.BodyResponse())
    if phase == "request_trailers":
        return ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
    if phase == "response_trailers":
        return ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
    return ext.ProcessingResponse(request_body=ext.BodyResponse())


class ExternalProcessor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers Envoy's ext_proc streams with routing decisions."""

    def __init__(
        self,
        service: RoutingService,
        metrics: RouterMetrics,
        *,
        max_message_timeout_s: float = 0.0,
        tracer: DecisionTracer | None = None,
        cascade: Cascade | None = None,
        cascade_filter: CascadeFilter | None = None,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._tracer = tracer or DecisionTracer(None)
        # The cascade (README "Cascade"): planned here on the request; its held-back
        # answers arrive on the second filter's streams, served by `cascade_filter`.
        self._cascade = cascade
        self._cascade_filter = cascade_filter
        # Decision streams open now (the router filter's, not the cascade's): how many
        # decisions share the CPU, which the classifier reads to shed its encoder.
        self._open_streams = 0
        # A big body may need longer than Envoy's message_timeout; Envoy grants up to its
        # max_message_timeout when asked before the timer runs out (0: it grants nothing).
        self._extend: ext.ProcessingResponse | None = None
        if max_message_timeout_s > 0:
            extension = ext.ProcessingResponse()
            extension.override_message_timeout.FromNanoseconds(int(max_message_timeout_s * 1e9))
            self._extend = extension

    async def Process(
        self,
        request_iterator: AsyncIterator[ext.ProcessingRequest],
        context: grpc.aio.ServicerContext[ext.ProcessingRequest, ext.ProcessingResponse],
    ) -> None:
        """Handle one HTTP request's worth of ext_proc messages."""
        # context.read/write, not `async for` and `yield`: gRPC's stream is most of a
        # decision's CPU, and a do-nothing servicer costs ~5 % less per stream this way
        # (0.43 against 0.45 ms of CPU at 32 streams, median of 4 alternating runs).
        del request_iterator  # the two styles must not be mixed on one stream
        metadata: Metadata = tuple(context.invocation_metadata() or ())
        filter_name = _metadata_value(metadata, FILTER_METADATA)
        if filter_name == CASCADE_FILTER and self._cascade_filter is not None:
            await self._cascade_filter.serve(context)  # a held-back answer
            return
        self._open_streams += 1
        try:
            await self._serve(context, metadata)
        finally:
            self._open_streams -= 1

    @property
    def open_streams(self) -> int:
        """How many decision streams are open now (each request's, from Envoy)."""
        return self._open_streams

    async def _serve(
        self,
        context: grpc.aio.ServicerContext[ext.ProcessingRequest, ext.ProcessingResponse],
        metadata: Metadata,
    ) -> None:
        route_policy = _metadata_value(metadata, ROUTE_POLICY_METADATA)
        headers: dict[str, str] = {}
        while (message := await context.read()) is not grpc.aio.EOF:
            phase = message.WhichOneof("request")
            if phase == "request_headers":
                headers = headers_to_dict(message.request_headers.headers)
                if message.request_headers.end_of_stream:
                    await context.write(self._headers_only(headers))
                else:
                    await context.write(_CONTINUE_HEADERS)
            elif phase == "request_body":
                if not headers:  # the headers phase was skipped: its attributes stand in
                    headers = headers_from_attributes(message.attributes)
                body = message.request_body.body
                if self._extend is not None and len(body) >= BIG_BODY_BYTES:
                    await context.write(self._extend)
                await context.write(await self._on_body(headers, body, route_policy, metadata))
            else:
                await context.write(_passthrough(phase or ""))

    def _headers_only(self, headers: Mapping[str, str]) -> ext.ProcessingResponse:
        path = headers.get(":path", "")
        if path.split("?", 1)[0] == MODELS_PATH and headers.get(":method", "GET") == "GET":
            return models_response(self._service.models_body())
        if endpoint_for_path(path) is None:
            return _CONTINUE_HEADERS
        error = RequestError("the request has no body; expected a JSON object", code="no_body")
        self._metrics.rejected(error.code)
        return error_response(error)

    async def _on_body(
        self,
        headers: Mapping[str, str],
        body: bytes,
        route_policy: str | None,
        metadata: Metadata,
    ) -> ext.ProcessingResponse:
        started = time.perf_counter()
        path = headers.get(":path", "")
        if endpoint_for_path(path) is None:
            return ext.ProcessingResponse(request_body=ext.BodyResponse())
        opted_in = _metadata_value(metadata, ROUTE_CASCADE_METADATA) == "true"
        with self._tracer.decision(metadata) as span:
            return await self._decide(path, headers, body, route_policy, span, started, opted_in)

    def _reject(self, error: RequestError, span: Span | None) -> ext.ProcessingResponse:
        """Count a request the router refuses and answer it with its JSON error."""
        self._metrics.rejected(error.code)
        if span is not None:
            span.set_attribute("router.rejected", error.code)
        return error_response(error)

    async def _decide(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        route_policy: str | None,
        span: Span | None,
        started: float,
        route_cascades: bool = False,
    ) -> ext.ProcessingResponse:
        decision_id = new_decision_id()
        cascade = self._cascade
        ticket = cascade.ticket(headers) if cascade is not None else None
        try:
            routed = await self._service.route(
                path,
                headers,
                body,
                route_policy=route_policy,
                decision_id=decision_id,
                escalate_to=ticket.tier if ticket is not None else None,
            )
        except RequestError as error:
            return self._reject(error, span)
        except Exception:
            # A bug must not become a silent gRPC UNKNOWN (Envoy would fail open with no
            # trace): log it, count it, and route the request on the default policy.
            log.exception("decision %s: routing failed; using the default decision", decision_id)
            self._metrics.error("extproc")
            try:
                routed = self._service.fallback(body, decision_id, headers)
            except RequestError as error:  # the client's limits, which the default keeps too
                return self._reject(error, span)
            except Exception:
                log.exception("decision %s: no default decision either; Envoy's fallback route "
                              "serves the request", decision_id)  # fmt: skip
                return ext.ProcessingResponse(request_body=ext.BodyResponse())
        outcome = classifier_outcome(routed)
        if span is not None and span.is_recording():
            capture = self._tracer.capture_content
            span.set_attributes(decision_attributes(routed, outcome, capture_content=capture))
        prepared = None
        if cascade is not None:
            routed, prepared = await self._plan_cascade(
                cascade, routed, ticket, route_cascades, path, headers, body, route_policy, span
            )
        self._metrics.decided(routed.decision, outcome, time.perf_counter() - started)
        return decision_response(routed, prepared)

    async def _plan_cascade(
        self,
        cascade: Cascade,
        routed: Routed,
        ticket: Ticket | None,
        route_cascades: bool,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        route_policy: str | None,
        span: Span | None,
    ) -> tuple[Routed, Prepared | None]:
        """A cascading request prepared for its answer to be held, or, when the cascade's
        memory knows a similar prompt, decided on that prompt's tier at once."""
        if routed.intent is None:
            return routed, None
        plan = cascade.plan(routed, routed.intent, ticket, route_cascades)
        if plan is not None and span is not None and span.is_recording():
            span.set_attribute("router.cascade", plan.why)
        if plan is None or not plan.cascades:
            return routed, None
        recalled, vector = await cascade.recall(routed)
        if recalled is not None:  # a similar prompt needed that tier: go there now
            try:
                remembered = await self._service.route(
                    path, headers, body, route_policy=route_policy,
                    decision_id=routed.decision.decision_id, escalate_to=recalled[0],
                )  # fmt: skip
            except RequestError:  # e.g. the client's limits rule that tier out: cascade
                pass
            else:
                if span is not None and span.is_recording():
                    span.set_attribute("router.cascade", f"remembered: {recalled}")
                return remembered, None
        return routed, cascade.prepare(routed, plan, path, ticket, vector)


def _metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None

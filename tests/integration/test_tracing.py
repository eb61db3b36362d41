"""One request through the real Envoy yields one trace: Envoy's spans and the router's decision.

The test starts its own OTLP/gRPC trace receiver (opentelemetry-proto's TraceService, on
a port chosen now), starts the stack with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it,
sends one chat request and waits (bounded) until the trace holds Envoy's ingress span,
the sidecar's `router.decision` span and its stage spans. Run with `-s` to see the
rendered trace tree (the README shows one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from sidecar.devstack.stack import LocalStack
from tests.integration.conftest import start_stack
from tests.integration.otlp import ReceivedSpan, TraceReceiver, attribute_value, running_receiver

pytestmark = pytest.mark.integration

PROMPT_MARKER = "quokka-tracing-marker-7731"
SECRET = "sk-test-SECRET"
ARRIVAL_DEADLINE_S = 30.0


@pytest.fixture
def receiver() -> Iterator[tuple[TraceReceiver, int]]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def traced_stack(tmp_path: Path, receiver: tuple[TraceReceiver, int]) -> Iterator[LocalStack]:
    _, port = receiver
    environ = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the sidecar exports within 0.1 s
    }
    environ.pop("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", None)
    stack = start_stack(tmp_path, environ=environ)
    try:
        yield stack
    finally:
        stack.stop()


def _is_whole(spans: Sequence[ReceivedSpan]) -> bool:
    names = {s.span.name for s in spans}
    services = {s.service for s in spans}
    # Envoy ends (and exports) its ingress span when the response is done, the sidecar
    # its decision when it answers; the trace is whole when both, and the stages, arrived.
    return (
        "router.decision" in names
        and "router.policy" in names
        and "envoy" in services
        and any(s.service == "envoy" and not s.parent_id for s in spans)
        and any(_is_provider_call(s) for s in spans)
    )


def _is_provider_call(span: ReceivedSpan) -> bool:
    """Envoy's span for an upstream attempt (spawn_upstream_span), not the ext_proc stream's."""
    name = span.span.name
    return span.service == "envoy" and name.startswith("router ") and name.endswith(" egress")


def test_one_request_is_one_trace_from_envoy_through_the_decision(
    traced_stack: LocalStack, receiver: tuple[TraceReceiver, int]
) -> None:
    collector, _ = receiver
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": f"Hello there! {PROMPT_MARKER}"}],
    }
    reply = httpx.post(
        traced_stack.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    upstream = reply.headers["x-router-upstream"]

    spans = collector.wait_for_trace(_is_whole, ARRIVAL_DEADLINE_S)
    assert spans, f"no whole trace within {ARRIVAL_DEADLINE_S} s: {_names(collector.all_spans())}"
    print("\n" + render_tree(spans))

    by_id = {s.span_id: s for s in spans}
    decision = next(s for s in spans if s.span.name == "router.decision")
    assert decision.service == "inference-router"
    parent = by_id.get(decision.parent_id)
    assert parent is not None and parent.service == "envoy", "the decision's parent is not Envoy's"
    # Envoy's span for the ext_proc stream, itself under the request's ingress span.
    assert "ExternalProcessor" in parent.span.name
    attributes = decision.attributes()
    assert attributes["router.upstream"] == upstream
    assert attributes["router.route"] == reply.headers["x-router-route"]
    assert attributes["gen_ai.request.model"] == reply.headers["x-router-model"]
    assert attributes["router.policy"] == "balanced"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["router.client_model"] == "auto"
    assert upstream in attributes["router.candidates.clusters"]  # type: ignore[operator]
    assert "router.classifier_stage" in attributes
    assert "router.confidence" in attributes
    stages = {s.span.name for s in spans if s.parent_id == decision.span_id}
    assert {"router.parse", "router.policy"} <= stages
    assert stages & {"router.stage1", "router.embed"}, stages
    # Envoy's call to the provider is in the same trace, under the same ingress span.
    root = by_id[parent.parent_id]
    assert root.service == "envoy" and not root.parent_id
    calls = [s for s in spans if _is_provider_call(s)]
    assert [s.attributes().get("upstream_cluster") for s in calls] == [upstream], _names(spans)
    assert calls[0].parent_id == root.span_id

    for span in collector.all_spans():
        text = _all_text(span)
        assert PROMPT_MARKER not in text, f"{span.span.name} holds the prompt"
        assert SECRET not in text, f"{span.span.name} holds the API key"


def test_an_escalation_joins_the_client_requests_trace(
    traced_stack: LocalStack, receiver: tuple[TraceReceiver, int]
) -> None:
    collector, _ = receiver
    small = f"http://127.0.0.1:{traced_stack.ports.providers['sim-small']}/sim/control"
    httpx.put(small, json={"shaky_share": 1.0}, timeout=5).raise_for_status()
    body = {
        "model": "router:cost",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "an answer the cheap model is unsure of"}],
    }
    reply = httpx.post(traced_stack.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200 and ">" in reply.headers["x-router-cascade"], reply.headers

    def escalated(spans: Sequence[ReceivedSpan]) -> bool:
        decisions = [s for s in spans if s.span.name == "router.decision"]
        roots = [s for s in spans if s.service == "envoy" and not s.parent_id]
        return (
            len(decisions) == 2
            and len(roots) == 1
            and len([s for s in spans if _is_provider_call(s)]) == 2
        )

    spans = collector.wait_for_trace(escalated, ARRIVAL_DEADLINE_S)
    assert spans, f"no trace holds both attempts: {_names(collector.all_spans())}"
    print("\n" + render_tree(spans))
    clusters = sorted(
        str(s.attributes().get("upstream_cluster")) for s in spans if _is_provider_call(s)
    )
    assert clusters[1] == "sim-small" and clusters[0].startswith("sim-mid"), clusters


def _all_text(received: ReceivedSpan) -> str:
    span = received.span
    parts = [span.name, repr(received.attributes()), span.status.message]
    for event in span.events:
        parts.append(event.name)
        parts += [repr(attribute_value(kv.value)) for kv in event.attributes]
    return "\n".join(parts)


def _names(spans: Sequence[ReceivedSpan]) -> list[str]:
    return [f"{s.service}:{s.span.name}" for s in spans]


# The attributes shown in the rendered tree, when a span has them.
_SHOWN = (
    "router.route",
    "router.policy",
    "router.upstream",
    "router.confidence",
    "router.classifier_stage",
    "upstream_cluster",
    "http.status_code",
)


def render_tree(spans: Sequence[ReceivedSpan]) -> str:
    """The trace as an indented tree: service, span name, duration, a few attributes."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str, prefix: str) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: s.span.start_time_unix_nano)
        for index, span in enumerate(kids):
            last = index == len(kids) - 1
            ms = (span.span.end_time_unix_nano - span.span.start_time_unix_nano) / 1e6
            attributes = span.attributes()
            shown = " ".join(
                f"{key}={_short(attributes[key])}" for key in _SHOWN if key in attributes
            )
            branch = "" if not prefix and parent == "" else ("└─ " if last else "├─ ")
            lines.append(f"{prefix}{branch}[{span.service}] {span.span.name}  {ms:.2f} ms  {shown}")
            walk(span.span_id, prefix + ("" if branch == "" else ("   " if last else "│  ")))

    walk("", "")
    return "\n".join(lines)


def _short(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)

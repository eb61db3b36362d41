"""Talking to the sidecar the way Envoy does: one ext_proc stream per HTTP request.

With the shipped config (`request_header_mode: SKIP`, `request_body_mode: BUFFERED`,
`request_attributes`) Envoy sends one message, the whole body with the path and the
router's headers as attributes. With `request_header_mode: SEND` it sends the request
headers first, then the body. It reads one answer per message. The unit tests of the
adapter and the decision-latency benchmark both use these helpers, so what they measure
and check is the exchange Envoy really has.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.config.envoy import (
    DECISION_NAMESPACE,
    EXT_PROC_FILTER,
    PATH_ATTRIBUTE,
    header_attribute,
)


def headers_message(
    path: str, headers: Mapping[str, str] | None = None, *, end_of_stream: bool = False
) -> ext.ProcessingRequest:
    """The request-headers message of a POST to `path` (`end_of_stream`: no body follows)."""
    pairs = {":path": path, ":method": "POST", **(headers or {})}
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
    )
    return ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(headers=header_map, end_of_stream=end_of_stream)
    )


def body_message(payload: object) -> ext.ProcessingRequest:
    """The buffered request-body message; `payload` is raw bytes or a JSON-able value."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ext.ProcessingRequest(request_body=ext.HttpBody(body=raw, end_of_stream=True))


def attributed_body_message(
    path: str, payload: object, headers: Mapping[str, str] | None = None
) -> ext.ProcessingRequest:
    """The body message alone, carrying the path and `headers` as Envoy's attributes."""
    message = body_message(payload)
    fields = message.attributes[EXT_PROC_FILTER].fields
    fields[PATH_ATTRIBUTE].string_value = path
    for name, value in (headers or {}).items():
        fields[header_attribute(name)].string_value = value
    return message


def chat_request(
    prompt: str,
    *,
    model: str = "auto",
    headers: Mapping[str, str] | None = None,
    headers_phase: bool = True,
) -> list[ext.ProcessingRequest]:
    """The messages Envoy sends for a chat completion request: the headers and the body,
    or (`headers_phase=False`, the shipped config) the body with attributes alone."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if not headers_phase:
        return [attributed_body_message("/v1/chat/completions", body, headers)]
    return [
        headers_message(
            "/v1/chat/completions", {"content-type": "application/json", **(headers or {})}
        ),
        body_message(body),
    ]


async def exchange(
    stub: ext_grpc.ExternalProcessorStub,
    messages: Sequence[ext.ProcessingRequest],
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout_s: float = 10.0,
) -> list[ext.ProcessingResponse]:
    """Send the messages on one stream and collect every answer."""

    async def requests() -> AsyncIterator[ext.ProcessingRequest]:
        for message in messages:
            yield message

    call = stub.Process(requests(), metadata=metadata, timeout=timeout_s)
    return [reply async for reply in call]


def decision_headers(reply: ext.ProcessingResponse) -> dict[str, str]:
    """The headers a body-phase answer has Envoy set (the decision), by name."""
    fields = reply.dynamic_metadata.fields
    if DECISION_NAMESPACE not in fields:
        return {}
    decided = fields[DECISION_NAMESPACE].struct_value.fields
    return {name: value.string_value for name, value in decided.items()}

"""Talking to the sidecar the way Envoy does: one ext_proc stream per HTTP request.

Envoy (with `request_header_mode: SEND`, `request_body_mode: BUFFERED`) sends the request
headers, then the whole body in one message, and reads one answer per message. The unit
tests of the adapter and the decision-latency benchmark both use these helpers, so what
they measure and check is the exchange Envoy really has.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc


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


def chat_request(
    prompt: str, *, model: str = "auto", headers: Mapping[str, str] | None = None
) -> list[ext.ProcessingRequest]:
    """The two messages Envoy sends for a one-message chat completion request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
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
    """The headers a body-phase answer sets (the decision), by name."""
    mutation = reply.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}

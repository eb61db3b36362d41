"""The answer-holding ext_proc filter: Envoy's messages in, the cascade's verdict out.

Envoy's second ext_proc filter (`inference_router.cascade`) is off for every request but
those on the cascade route, where its per-route config asks for the request headers, the
response headers and the buffered response body. One gRPC stream carries one answer: the
request's headers (kept for an escalation to forward), the answer's headers (we note the
status and reply CONTINUE), then the whole body, which `Cascade.check` judges. A
confident answer goes back untouched but for `x-router-cascade`; a shaky one first gets
Envoy to wait longer for us (`override_message_timeout`, up to the filter's
max_message_timeout), then is replaced by the next tier's answer: status, headers, body.
Nothing here decides anything; it only translates (sidecar/serving/cascade.py decides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from sidecar.serving.cascade import Cascade, Reply
from sidecar.serving.envoy_headers import headers_to_dict, set_header
from sidecar.serving.tracing import TRACE_HEADERS

log = logging.getLogger(__name__)

Stream = grpc.aio.ServicerContext[ext.ProcessingRequest, ext.ProcessingResponse]

# The gRPC metadata the cascade filter's streams carry (envoy/*.yaml initial_metadata).
FILTER_METADATA = "x-router-filter"
CASCADE_FILTER = "cascade"

_CONTINUE = ext.ProcessingResponse(response_headers=ext.HeadersResponse())
_REQUEST_CONTINUE = ext.ProcessingResponse(request_headers=ext.HeadersResponse())
_TRAILERS = ext.ProcessingResponse(response_trailers=ext.TrailersResponse())
_EMPTY_BODY = ext.ProcessingResponse(response_body=ext.BodyResponse())
# Escalations take as long as the next model does; Envoy allows up to the filter's
# max_message_timeout, which must be above the cascade's budget_s (checked at start).
_MARGIN_S = 1.0


def reply_response(reply: Reply) -> ext.ProcessingResponse:
    """The body-phase answer that applies a cascade's reply to the held answer."""
    common = ext.CommonResponse()
    sets = list(reply.set_headers)
    if reply.status is not None:
        sets.append((":status", str(reply.status)))
    for name, value in sets:
        set_header(common.header_mutation.set_headers, name, value)
    common.header_mutation.remove_headers.extend(reply.remove_headers)
    if reply.body is not None:
        common.body_mutation.body = reply.body
    return ext.ProcessingResponse(response_body=ext.BodyResponse(response=common))


def wait_longer(seconds: float) -> ext.ProcessingResponse:
    """Ask Envoy to wait `seconds` for our answer to the message it is waiting on."""
    extension = ext.ProcessingResponse()
    extension.override_message_timeout.FromNanoseconds(int(seconds * 1e9))
    return extension


class CascadeFilter:
    """Serves the cascade filter's ext_proc streams."""

    def __init__(
        self,
        cascade: Cascade,
        max_message_timeout_s: float,
        observe_check: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._cascade = cascade
        self._max_wait_s = max_message_timeout_s
        self._observe_check = observe_check

    async def serve(self, context: Stream) -> None:
        """One held answer's messages: headers, then the buffered body."""
        status, headers = 0, {}
        # Envoy's trace context for this answer (when it traces): an escalation carries it,
        # so the second request joins the client request's trace.
        trace = {
            name: value.decode() if isinstance(value, bytes) else value
            for name, value in context.invocation_metadata() or ()
            if name in TRACE_HEADERS
        }
        while (message := await context.read()) is not grpc.aio.EOF:
            phase = message.WhichOneof("request")
            if phase == "request_headers":  # the client's, for an escalation to forward
                self._cascade.note_request(headers_to_dict(message.request_headers.headers))
                await context.write(_REQUEST_CONTINUE)
            elif phase == "response_headers":
                headers = headers_to_dict(message.response_headers.headers)
                status = int(headers.get(":status", "0") or 0)
                await context.write(_CONTINUE)
            elif phase == "response_body":
                await self._judge(context, status, headers, message.response_body.body, trace)
            elif phase == "response_trailers":
                await context.write(_TRAILERS)
            else:  # not sent by the shipped config; answer so Envoy does not wait
                await context.write(_EMPTY_BODY)

    async def _judge(
        self,
        context: Stream,
        status: int,
        headers: dict[str, str],
        body: bytes,
        trace: dict[str, str],
    ) -> None:
        try:
            started = time.perf_counter()
            check = await self._cascade.check(status, headers, body)
            self._observe_check(time.perf_counter() - started)
            if check.escalation is None:
                await context.write(reply_response(check.reply or Reply()))
                return
            wait = min(self._max_wait_s, check.escalation.seconds_left + _MARGIN_S)
            await context.write(wait_longer(wait))
            reply = await self._cascade.escalate(check.escalation, trace)
        except Exception:
            # A bug must not cost the client its answer: return it as it is.
            log.exception("cascade: judging an answer failed; returning it unchanged")
            self._cascade.stats.count("error")
            reply = Reply()
        await context.write(reply_response(reply))

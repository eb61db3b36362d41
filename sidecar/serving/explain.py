"""POST /explain on the admin port: a request body in, its decision and explanation out.

An operator asks why a request would go where it goes, with curl and no gRPC client.
The handler runs `RoutingService.route`, the path Envoy's requests and the gRPC `Decide`
take, and answers `Decide`'s message (`sidecar.serving.api.to_proto`) in protobuf's
JSON mapping, field names as in the .proto and every field present, so the two can
never disagree. Nothing is sent to a provider and no decision is counted in the metrics.

The request's headers are the client's (`x-router-policy`, `x-router-max-cost-usd`, ...);
`?path=/v1/completions` explains a completions request (default: chat). Errors are
OpenAI-style bodies: bad JSON 400, an unknown model 404, a body over the sidecar's
`max_body_bytes` 413, and 403 for a caller that is not on loopback: the admin port may
be bound wider so that Prometheus can scrape it, but an explanation runs the classifier
and tells the routing table, which is for the operator only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format

from sidecar.core.request import CHAT_PATH
from sidecar.errors import RequestError
from sidecar.serving.api import to_proto
from sidecar.serving.metrics import RouterMetrics
from sidecar.serving.service import Routed, RoutingService, new_decision_id
from sidecar.serving.statuses import http_status, openai_error_body

log = logging.getLogger(__name__)

EXPLAIN_PATH = "/explain"

Handler = Callable[[web.Request], Awaitable[web.Response]]


def explanation_json(routed: Routed) -> dict[str, object]:
    """A decision and its evidence as `Decide` returns them, as a JSON object."""
    return json_format.MessageToDict(
        to_proto(routed),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is this machine's loopback (127.0.0.0/8 or ::1)."""
    if address is None:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, code: str) -> web.Response:
    body = openai_error_body(RequestError(message, code=code))
    return web.Response(status=status, body=body, content_type="application/json")


def explain_handler(
    service: RoutingService, metrics: RouterMetrics, max_body_bytes: int
) -> Handler:
    """The aiohttp handler of POST /explain (the app's `client_max_size` must allow the limit)."""

    async def explain(request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            return _error(403, "/explain answers loopback callers only", "forbidden")
        if request.content_length is not None and request.content_length > max_body_bytes:
            return _too_large(max_body_bytes)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body past the app's limit
            return _too_large(max_body_bytes)
        if len(body) > max_body_bytes:
            return _too_large(max_body_bytes)
        headers = {name.lower(): value for name, value in request.headers.items()}
        decision_id = new_decision_id()
        try:
            routed = await service.route(
                request.query.get("path", CHAT_PATH), headers, body, decision_id=decision_id
            )
        except RequestError as error:
            return web.Response(
                status=http_status(error),
                body=openai_error_body(error),
                content_type="application/json",
            )
        except Exception:
            # Never send exception text to a caller: the log has it under the decision id.
            log.exception("decision %s: /explain failed", decision_id)
            metrics.error("explain")
            return _error(500, f"internal error (decision {decision_id}); see the log", "internal")
        return web.json_response(explanation_json(routed), dumps=_compact)

    return explain


def _too_large(limit: int) -> web.Response:
    return _error(413, f"the request body is larger than {limit} bytes", "body_too_large")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))

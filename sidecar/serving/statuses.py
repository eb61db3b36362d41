"""Where router errors become wire statuses: HTTP with an OpenAI-style body, or gRPC.

The only place that knows a `NotFoundError` is a 404 and a `RequestError` a 400; the core
raises errors by kind and the edges call these. An `OutOfLimitsError` is a 400 over HTTP
(the client's limits cannot be met), and FAILED_PRECONDITION over gRPC: the request is
well formed, but the providers' current state does not allow it.
"""

from __future__ import annotations

import json

import grpc

from sidecar.errors import (
    IndexLoadError,
    NotFoundError,
    OutOfLimitsError,
    RequestError,
    RouterError,
)


def http_status(error: RequestError) -> int:
    """The HTTP status a client gets for a refused request."""
    return 404 if isinstance(error, NotFoundError) else 400


def openai_error_body(error: RequestError) -> bytes:
    """The JSON body OpenAI itself would send for this error."""
    fields = {
        "message": error.message,
        "type": "invalid_request_error",
        "code": error.code,
        "param": error.param,
    }
    return json.dumps({"error": fields}).encode()


def grpc_status(error: RouterError) -> grpc.StatusCode:
    """The gRPC status of the project's API for a router error."""
    if isinstance(error, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, OutOfLimitsError | IndexLoadError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, RequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL

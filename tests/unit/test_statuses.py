"""Where router errors become wire statuses: HTTP with an OpenAI body, and gRPC."""

from __future__ import annotations

import json

import grpc
import pytest

from sidecar.errors import (
    ConfigError,
    IndexLoadError,
    NotFoundError,
    OutOfLimitsError,
    RequestError,
    RouterError,
)
from sidecar.serving.statuses import grpc_status, http_status, openai_error_body


def test_a_bad_request_is_400_and_an_unknown_thing_404() -> None:
    assert http_status(RequestError("bad")) == 400
    assert http_status(NotFoundError("gone", code="model_not_found")) == 404
    assert http_status(OutOfLimitsError("nothing fits")) == 400


def test_the_openai_body_carries_every_field() -> None:
    error = NotFoundError("no such model", code="model_not_found", param="model")
    body = json.loads(openai_error_body(error))
    assert body == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "code": "model_not_found",
            "param": "model",
        }
    }
    assert json.loads(openai_error_body(RequestError("x")))["error"]["param"] is None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFoundError("gone"), grpc.StatusCode.NOT_FOUND),
        (RequestError("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (OutOfLimitsError("nothing fits"), grpc.StatusCode.FAILED_PRECONDITION),
        (IndexLoadError("corrupt"), grpc.StatusCode.FAILED_PRECONDITION),
        (ConfigError("ours"), grpc.StatusCode.INTERNAL),
    ],
)
def test_grpc_statuses(error: RouterError, status: grpc.StatusCode) -> None:
    assert grpc_status(error) == status

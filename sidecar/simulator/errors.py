"""The simulator's own errors: it plays a third-party server, so it shares none with the router."""

from __future__ import annotations

import json


class SimulatorError(Exception):
    """Base class of every error the simulator raises on purpose."""


class SimulatorConfigError(SimulatorError):
    """A simulator setting is wrong; the message names the field."""


class ApiError(SimulatorError):
    """A request the simulated provider refuses, with the status and body OpenAI would send."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "invalid_request",
        param: str | None = None,
        error_type: str = "invalid_request_error",
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.error_type = error_type
        self.retry_after_s = retry_after_s

    def openai_body(self) -> bytes:
        """The JSON body OpenAI itself would send for this error."""
        error = {"message": self.message, "type": self.error_type, "code": self.code}
        return json.dumps({"error": {**error, "param": self.param}}).encode()

"""One error hierarchy for the whole router.

Every error says whose fault it is: the caller's request (`RequestError`, becomes an
HTTP 4xx with an OpenAI-style body) or our own configuration and state (`ConfigError`,
`IndexLoadError`, ...). The edges (ext_proc, the gRPC API, the CLI) turn these into
statuses in exactly one place each; nothing below them catches and hides an error.
"""

from __future__ import annotations

import json


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


class RequestError(RouterError):
    """The client's request is unusable; carries the HTTP status and OpenAI error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "invalid_request",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.error_type = error_type

    def openai_body(self) -> bytes:
        """The JSON body OpenAI itself would send for this error."""
        error: dict[str, str | None] = {
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "param": self.param,
        }
        return json.dumps({"error": error}).encode()


class ConfigError(RouterError):
    """The operator's configuration is wrong; the message names the file, key and problem."""


class IndexLoadError(RouterError):
    """An exemplar index on disk is missing, corrupt or built with a different embedder."""


class EmbedderError(RouterError):
    """The embedding model cannot be built or loaded."""

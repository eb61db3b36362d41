"""One error hierarchy for the whole router (the provider simulator keeps its own).

Every error says whose fault it is: the caller's request (`RequestError` and its
`NotFoundError` and `OutOfLimitsError`), or our own configuration, files and state (`ConfigError`,
`IndexLoadError`, `EmbedderError`, `OutputError`, `StackError`). Nothing here knows a
transport: the edges turn these into HTTP statuses and OpenAI-style bodies, gRPC statuses
or exit codes, each in exactly one place (`sidecar.serving.statuses`, `sidecar.cli.main`).
Nothing below the edges catches and hides an error.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


class RequestError(RouterError):
    """The client's request is unusable; `code` and `param` are OpenAI's error fields."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class NotFoundError(RequestError):
    """The request names something the router does not have: a model, a path."""


class OutOfLimitsError(RequestError):
    """No provider can serve the request within the client's own cost or latency limits."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="no_provider_within_limits")


class ConfigError(RouterError):
    """The operator's configuration is wrong; the message names the file, key and problem."""


class IndexLoadError(RouterError):
    """An exemplar index on disk is missing, corrupt or built with a different embedder."""


class EmbedderError(RouterError):
    """The embedding model cannot be built, loaded or run."""


class OutputError(RouterError):
    """A result file (scores, curve, plot, settings) cannot be written where asked."""


class StackError(RouterError):
    """A child process of the local stack failed to start or died."""

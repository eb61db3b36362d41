"""What a running simulator has been told to do beyond its config: stall, and check models.

Theory: resilience is tested by making a provider misbehave on demand, the ways real ones
do. A *stall* is a model server that hangs: it keeps its connections open and answers
nothing (a new request gets no response headers, a stream in flight stops mid-way), and,
when the whole process is wedged, its `/health` hangs too. A *model check* is what a real
provider does with a name it does not serve: `404 model_not_found`. The simulator starts
from its `SimulatorConfig` (`check_model`, `accept_models`); `PUT /sim/control` with a
JSON object changes only the fields it names. Pure: the server keeps one `Behaviour` and
replaces it whole on each change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from sidecar.simulator.errors import ApiError


@dataclass(frozen=True)
class Behaviour:
    """The simulator's current, changeable behaviour."""

    stall: bool = False  # completions hang: no response, streams stop sending
    stall_health: bool = False  # GET /health hangs too (a wedged process)
    check_model: bool = False  # refuse a model it does not serve (404 model_not_found)
    accept_models: tuple[str, ...] = ()  # other names accepted when checking, e.g. "auto"
    fail_status: int | None = None  # answer every completion with this error (429, 5xx)
    retry_after_s: int | None = None  # with fail_status: the Retry-After header it sends
    shaky_share: float = 0.0  # the share of prompts answered shakily (SimulatorConfig)

    def as_json(self) -> dict[str, object]:
        """The behaviour as `GET /sim/control` reports it."""
        data = asdict(self)
        data["accept_models"] = list(self.accept_models)
        return data


_FIELDS = (
    "stall", "stall_health", "check_model", "accept_models", "fail_status", "retry_after_s",
    "shaky_share",
)  # fmt: skip
# The failures real providers answer with: rate limited, broken, overloaded, timed out.
FAIL_STATUSES = frozenset({429, 500, 502, 503, 504})


def updated(current: Behaviour, payload: Mapping[str, object]) -> Behaviour:
    """`current` with the fields `payload` names changed; a bad field is a 400 naming it."""
    for key in payload:
        if key not in _FIELDS:
            raise ApiError(f"unknown field '{key}' (known: {', '.join(_FIELDS)})", param=key)
    accept = payload.get("accept_models")
    return Behaviour(
        stall=_flag(payload, "stall", current.stall),
        stall_health=_flag(payload, "stall_health", current.stall_health),
        check_model=_flag(payload, "check_model", current.check_model),
        accept_models=current.accept_models if accept is None else accepted_names(accept),
        fail_status=_optional_int(payload, "fail_status", current.fail_status, FAIL_STATUSES),
        retry_after_s=_optional_int(payload, "retry_after_s", current.retry_after_s, None),
        shaky_share=_share(payload, "shaky_share", current.shaky_share),
    )


def _optional_int(
    payload: Mapping[str, object], key: str, current: int | None, allowed: frozenset[int] | None
) -> int | None:
    if key not in payload:
        return current
    value = payload[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(f"'{key}' must be a non-negative integer or null", param=key)
    if allowed is not None and value not in allowed:
        raise ApiError(f"'{key}' must be one of {sorted(allowed)} or null", param=key)
    return value


def _share(payload: Mapping[str, object], key: str, current: float) -> float:
    value = payload.get(key, current)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ApiError(f"'{key}' must be a number from 0 to 1", code="invalid_type", param=key)
    return float(value)


def _flag(payload: Mapping[str, object], key: str, current: bool) -> bool:
    value = payload.get(key, current)
    if not isinstance(value, bool):
        raise ApiError(f"'{key}' must be a boolean", code="invalid_type", param=key)
    return value


def accepted_names(value: object) -> tuple[str, ...]:
    """A list of model names as a tuple; a 400 naming `accept_models` otherwise."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(name, str) and name for name in value
    ):
        raise ApiError(
            "'accept_models' must be a list of non-empty strings",
            code="invalid_type",
            param="accept_models",
        )
    return tuple(value)


def check_failure(behaviour: Behaviour) -> None:
    """Answer with the configured failure, as a broken or rate-limited provider would."""
    status = behaviour.fail_status
    if status is None:
        return
    if status == 429:
        raise ApiError(
            "Rate limit reached for requests (simulated). Please try again later.",
            status=429,
            code="rate_limit_exceeded",
            error_type="requests",
            retry_after_s=behaviour.retry_after_s,
        )
    raise ApiError(
        f"The server had an error while processing your request (simulated {status}).",
        status=status,
        code="server_error",
        error_type="server_error",
        retry_after_s=behaviour.retry_after_s,
    )


def check_model(behaviour: Behaviour, served: str, asked: str) -> None:
    """Refuse `asked` as a provider would when it is not the model served here."""
    if not behaviour.check_model or asked == served or asked in behaviour.accept_models:
        return
    raise ApiError(
        f"The model `{asked}` does not exist or you do not have access to it.",
        status=404,
        code="model_not_found",
        param="model",
    )

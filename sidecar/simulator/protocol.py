"""The OpenAI wire format as the simulator speaks it: request bodies in, response bytes out.

No I/O here. Parsing turns a decoded JSON body into a `SimRequest` or raises `ApiError`
with the field at fault as `param`, the way OpenAI reports it. Rendering turns an `Answer`
into the JSON body or the SSE events OpenAI would send, for `/v1/chat/completions`
(`chat.completion`, `chat.completion.chunk`) and `/v1/completions` (`text_completion`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sidecar.simulator.answer import Answer, FinishReason, Token
from sidecar.simulator.errors import ApiError

Endpoint = Literal["chat", "text"]

DONE_EVENT = b"data: [DONE]\n\n"

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MAX_TOP_LOGPROBS = {"chat": 20, "text": 5}


@dataclass(frozen=True)
class SimRequest:
    """What the simulator needs from one completion request, already validated."""

    endpoint: Endpoint
    model: str
    prompt: str  # every text the model reads, for token counts and weak-pattern matching
    echo_text: str  # what the echo style repeats: the last user message, or the prompt
    max_tokens: int | None
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


@dataclass(frozen=True)
class Usage:
    """Token counts reported in `usage`."""

    prompt_tokens: int
    completion_tokens: int

    def as_json(self) -> dict[str, int]:
        """The `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class ResponseMeta:
    """The fields every response object and chunk of one request repeats."""

    id: str
    created: int
    model: str


def parse_json_object(body: bytes) -> Mapping[str, object]:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    try:
        value: object = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(value, dict):
        raise ApiError(
            f"The request body must be a JSON object, got {_json_type(value)}.",
            code="invalid_type",
        )
    return value


def parse_chat_request(body: Mapping[str, object]) -> SimRequest:
    """Validate a `/v1/chat/completions` body."""
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "must be a non-empty array of message objects")
    texts: list[str] = []
    echo_text = ""
    for index, message in enumerate(messages):
        role, text = _parse_message(message, f"messages[{index}]")
        texts.append(text)
        if role == "user" or not echo_text:
            echo_text = text
    logprobs = _optional_bool(body, "logprobs") or False
    top_logprobs = _optional_int(body, "top_logprobs", 0, _MAX_TOP_LOGPROBS["chat"]) or 0
    if top_logprobs and not logprobs:
        raise _invalid("top_logprobs", "requires 'logprobs' to be true")
    max_completion = _optional_int(body, "max_completion_tokens", 1, None)
    max_tokens = _optional_int(body, "max_tokens", 1, None)
    _check_single_choice(body)
    return SimRequest(
        endpoint="chat",
        model=_model(body),
        prompt="\n".join(texts),
        echo_text=echo_text,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        stream=_optional_bool(body, "stream") or False,
        include_usage=_include_usage(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def parse_text_request(body: Mapping[str, object]) -> SimRequest:
    """Validate a `/v1/completions` body (one prompt per request)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise _missing("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _invalid("prompt", "must be a string or an array holding exactly one string")
    top_logprobs = _optional_int(body, "logprobs", 0, _MAX_TOP_LOGPROBS["text"])
    _check_single_choice(body)
    return SimRequest(
        endpoint="text",
        model=_model(body),
        prompt=prompt,
        echo_text=prompt,
        max_tokens=_optional_int(body, "max_tokens", 1, None),
        stream=_optional_bool(body, "stream") or False,
        include_usage=_include_usage(body),
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs or 0,
    )


def render_body(meta: ResponseMeta, request: SimRequest, answer: Answer, usage: Usage) -> bytes:
    """The non-streaming JSON response."""
    choice: dict[str, object]
    if request.endpoint == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text, "refusal": None},
            "logprobs": _chat_logprobs(answer.tokens) if request.logprobs else None,
            "finish_reason": answer.finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {
            "text": answer.text,
            "index": 0,
            "logprobs": (
                _text_logprobs(answer.tokens, len(request.prompt)) if request.logprobs else None
            ),
            "finish_reason": answer.finish_reason,
        }
        kind = "text_completion"
    return _dumps(
        {
            "id": meta.id,
            "object": kind,
            "created": meta.created,
            "model": meta.model,
            "choices": [choice],
            "usage": usage.as_json(),
        }
    )


class StreamRenderer:
    """SSE events for one streamed response; remembers the text offset between chunks."""

    def __init__(self, meta: ResponseMeta, request: SimRequest) -> None:
        self._meta = meta
        self._request = request
        self._offset = len(request.prompt)

    def start(self) -> bytes:
        """The opening event: chat announces the assistant role, text completions send none."""
        if self._request.endpoint == "text":
            return b""
        return self._event({"role": "assistant", "content": ""}, None, None)

    def tokens(self, tokens: Sequence[Token]) -> bytes:
        """One event per token, as OpenAI streams them."""
        events: list[bytes] = []
        for token in tokens:
            if self._request.endpoint == "chat":
                logprobs = _chat_logprobs([token]) if self._request.logprobs else None
                events.append(self._event({"content": token.text}, logprobs, None))
            else:
                logprobs = _text_logprobs([token], self._offset) if self._request.logprobs else None
                events.append(self._event(token.text, logprobs, None))
            self._offset += len(token.text)
        return b"".join(events)

    def end(self, finish_reason: FinishReason, usage: Usage) -> bytes:
        """The finishing event, the usage event when asked for, and `[DONE]`."""
        empty: str | dict[str, object] = {} if self._request.endpoint == "chat" else ""
        events = [self._event(empty, None, finish_reason)]
        if self._request.include_usage:
            events.append(_sse(self._object([], usage.as_json())))
        events.append(DONE_EVENT)
        return b"".join(events)

    def _event(
        self,
        delta: str | dict[str, object],
        logprobs: dict[str, object] | None,
        finish_reason: FinishReason | None,
    ) -> bytes:
        choice: dict[str, object] = {"index": 0}
        choice["delta" if self._request.endpoint == "chat" else "text"] = delta
        choice["logprobs"] = logprobs
        choice["finish_reason"] = finish_reason
        chunk = self._object([choice], None)
        if not self._request.include_usage:
            del chunk["usage"]
        return _sse(chunk)

    def _object(self, choices: list[object], usage: dict[str, int] | None) -> dict[str, object]:
        kind = "chat.completion.chunk" if self._request.endpoint == "chat" else "text_completion"
        return {
            "id": self._meta.id,
            "object": kind,
            "created": self._meta.created,
            "model": self._meta.model,
            "choices": choices,
            "usage": usage,
        }


def _parse_message(message: object, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise _invalid(where, "must be an object with 'role' and 'content'")
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _invalid(f"{where}.role", f"must be one of {', '.join(sorted(_ROLES))}")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return role, content or ""
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "must be a string, an array of parts, or null")
    texts: list[str] = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(part_where, "must be an object with a string 'type'")
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"{part_where}.text", "must be a string")
            texts.append(text)
    return role, "\n".join(texts)


def _model(body: Mapping[str, object]) -> str:
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "must be a non-empty string")
    return model


def _check_single_choice(body: Mapping[str, object]) -> None:
    n = _optional_int(body, "n", 1, None)
    if n is not None and n != 1:
        raise _invalid("n", f"the simulator returns one choice per request, got {n}")


def _include_usage(body: Mapping[str, object]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _invalid("stream_options", "must be an object")
    return _optional_bool(options, "include_usage", "stream_options.include_usage") or False


def _optional_bool(body: Mapping[str, object], key: str, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(param or key, "a boolean", value)


def _optional_int(body: Mapping[str, object], key: str, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python, but `true` is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, "an integer", value)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid(key, f"must be {bounds}, got {value}")
    return value


def _chat_logprobs(tokens: Sequence[Token]) -> dict[str, object]:
    content = [
        {
            "token": token.text,
            "logprob": round(token.logprob, 6),
            "bytes": list(token.text.encode()),
            "top_logprobs": [
                {
                    "token": choice.text,
                    "logprob": round(choice.logprob, 6),
                    "bytes": list(choice.text.encode()),
                }
                for choice in token.top
            ],
        }
        for token in tokens
    ]
    return {"content": content, "refusal": None}


def _text_logprobs(tokens: Sequence[Token], offset: int) -> dict[str, object]:
    offsets: list[int] = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [round(token.logprob, 6) for token in tokens],
        "top_logprobs": [
            {choice.text: round(choice.logprob, 6) for choice in token.top} for token in tokens
        ],
        "text_offset": offsets,
    }


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sse(value: object) -> bytes:
    return b"data: " + _dumps(value) + b"\n\n"


def _json_type(value: object) -> str:
    names: dict[type, str] = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _missing(param: str) -> ApiError:
    return ApiError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def _invalid(param: str, problem: str) -> ApiError:
    return ApiError(f"Invalid value for '{param}': {problem}.", code="invalid_value", param=param)


def _wrong_type(param: str, expected: str, value: object) -> ApiError:
    return ApiError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        code="invalid_type",
        param=param,
    )

"""Parse and validate OpenAI-compatible request bodies into the facts routing needs.

Validation is strict where a provider would reject the request anyway (so the client
gets a clear 400 from us instead of a confusing one from a provider we picked), and
lenient about fields routing does not read (tools, temperature, ...), which pass through
untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from sidecar.errors import RequestError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Routing reads a bounded slice of the prompt so a 50-page prompt costs the same as a
# short one. The embedder truncates to its own token budget too; this bound keeps the
# tokeniser's work small. Head and tail are kept because instructions sit at either end.
ROUTING_TEXT_HEAD_CHARS = 600
ROUTING_TEXT_TAIL_CHARS = 200
# A rough, tokeniser-free estimate for cost prediction (OpenAI's rule of thumb).
CHARS_PER_TOKEN = 4.0


class Endpoint(Enum):
    """The OpenAI endpoints the router routes."""

    CHAT = "chat"
    COMPLETIONS = "completions"


@dataclass(frozen=True)
class RequestFacts:
    """What the decision core needs to know about one request."""

    endpoint: Endpoint
    model: str
    routing_text: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool


def endpoint_for_path(path: str) -> Endpoint | None:
    """The endpoint a request path addresses, or None for paths the router passes through."""
    bare = path.split("?", 1)[0]
    if bare == CHAT_PATH:
        return Endpoint.CHAT
    if bare == COMPLETIONS_PATH:
        return Endpoint.COMPLETIONS
    return None


def bound_routing_text(text: str) -> str:
    """Keep the head and tail of a long text, within a fixed character budget, printable."""
    text = " ".join(text.split()) if len(text) < 4 * ROUTING_TEXT_HEAD_CHARS else text
    if len(text) > ROUTING_TEXT_HEAD_CHARS + ROUTING_TEXT_TAIL_CHARS:
        text = f"{text[:ROUTING_TEXT_HEAD_CHARS]} … {text[-ROUTING_TEXT_TAIL_CHARS:]}"
    # Control and format characters (NUL, zero-width, bidi overrides) carry no meaning
    # for routing and only confuse the tokeniser; whitespace runs become one space.
    if not text.isprintable():  # rare: the per-character pass only when it changes something
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())


def parse_request(endpoint: Endpoint, body: Mapping[str, object]) -> RequestFacts:
    """Validate a decoded body for an endpoint and extract the routing facts."""
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model", "must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", "must be a boolean")
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(body, "max_tokens")
    if endpoint is Endpoint.CHAT:
        routing_text, total_chars = _chat_text(body.get("messages"))
    else:
        routing_text, total_chars = _completion_text(body.get("prompt"))
    return RequestFacts(
        endpoint=endpoint,
        model=model,
        routing_text=bound_routing_text(routing_text),
        prompt_tokens=max(1, round(total_chars / CHARS_PER_TOKEN)),
        max_tokens=max_tokens,
        stream=stream,
    )


def _chat_text(messages: object) -> tuple[str, int]:
    if messages is None:
        raise _invalid("messages", "is required", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "must be a non-empty array of message objects")
    last_user = ""
    total_chars = 0
    for position, message in enumerate(messages):
        param = f"messages[{position}]"
        if not isinstance(message, dict):
            raise _invalid(param, f"must be an object, not {json_type(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid(f"{param}.role", f"must be one of {', '.join(sorted(_ROLES))}")
        text = _content_text(message.get("content"), f"{param}.content", role)
        total_chars += len(text)
        if role == "user":
            last_user = text
    if not last_user:
        # A conversation without a user turn is routed on its last message.
        last_user = _content_text(messages[-1].get("content"), "messages[-1].content", "")
    return last_user, total_chars


def _content_text(content: object, param: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        if role in ("assistant", "function", ""):
            return ""
        raise _invalid(param, "is required for this role", code="missing_required_parameter")
    if isinstance(content, list):
        texts: list[str] = []
        for position, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid(f"{param}[{position}]", "must be an object with a string 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _invalid(f"{param}[{position}].text", "must be a string")
                texts.append(text)
        return "\n".join(texts)
    raise _invalid(param, "must be a string or an array of content parts")


def _completion_text(prompt: object) -> tuple[str, int]:
    if prompt is None:
        raise _invalid("prompt", "is required", code="missing_required_parameter")
    if isinstance(prompt, str):
        return prompt, len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        texts = [str(p) for p in prompt]
        return texts[-1], sum(len(t) for t in texts)
    if isinstance(prompt, list) and prompt and all(_is_int(p) for p in prompt):
        # Pre-tokenised prompts carry no text to embed; route on nothing but their size.
        return "", int(CHARS_PER_TOKEN * len(prompt))
    raise _invalid("prompt", "must be a string, an array of strings or an array of token ids")


def _optional_positive_int(body: Mapping[str, object], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or int(str(value)) < 1:
        raise _invalid(name, "must be a positive integer")
    return int(str(value))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_type(value: object) -> str:
    """How an error message names a decoded JSON value's type: "an array", "null", ..."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _invalid(param: str, problem: str, *, code: str = "invalid_value") -> RequestError:
    return RequestError(f"'{param}' {problem}", code=code, param=param)

"""The cascade's answer evaluator: does the cheap model's answer look solid enough to ship?

Theory. A cascade sends a request to the cheapest adequate tier first and escalates when
the answer looks shaky. "Looks shaky" is read from signals of one answer, in two kinds:

- *Failures*, each decisive on its own: the response cannot be read (no `choices`, an
  error body, wrong types), the answer is empty, it is a refusal (OpenAI's `refusal`
  field, or a short answer that opens like "I'm sorry, but I can't"), it was cut off
  (`finish_reason: length`) by the provider's own cap (not by the client's `max_tokens`
  or `max_completion_tokens`: a stronger model would stop there too), or the request
  asked for JSON (`response_format` `json_object`/`json_schema`) and the answer does not
  parse. Confidence 0.
- *Graded signals*, each a number in [0, 1], combined by taking the lowest (an answer
  must look solid to every judge that can see it):
  - token logprobs, when the provider returned them: the geometric-mean token probability
    `exp(mean logprob)` (1 / perplexity), ramped linearly from `logprob_mean_floor` (0)
    to `logprob_mean_ceiling` (1), and the least likely token's logprob, ramped from
    `logprob_min_floor` to `logprob_min_ceiling`, the lower of the two. The mean says the
    model was unsure throughout; the minimum catches one gamble (a single unlikely digit
    in a number). **Not calibrated on real data** (no logprobs exist in the evaluation
    data): the defaults are a stated prior. A sampled answer routinely has a few tokens
    under p = 0.01, so the minimum only vetoes near-impossible tokens (p < 1e-4 gives 0).
  - the learned scorer's P(correct) (`sidecar.cascade.scorer`), when one is loaded:
    calibrated on labelled answers; its threshold is chosen on out-of-fold predictions.
  With no graded signal at all, a readable answer gets `no_signal_confidence` (1.0:
  nothing says it is shaky, so it ships).

The answer is escalated when its confidence is under `threshold`. `reason` names the
signal that decided: a failure, or the graded signal that was lowest.

Pure: `assess` reads only its arguments and never raises; what it cannot read is an
answer that cannot be trusted (reason `unreadable`). The sidecar embeds
`text_to_embed(...)` with the router's embedder when `needs_embedding`, then assesses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidecar.cascade.scorer import LearnedScorer
from sidecar.core.cascade import EvaluatorConfig

_JSON_FORMATS = ("json_object", "json_schema")
_REFUSAL = re.compile(
    r"^\W*(?:"
    r"(?:i'?m|i am) sorry,? but|sorry,? (?:but )?i can(?:no|')t|"
    r"(?:i can(?:no|')t|i won'?t|i will not|(?:i'?m|i am) (?:unable|not able) to) "
    r"(?:help|assist|comply|provide|do that|answer|fulfil)|"
    r"as an ai(?: language model)?,? i (?:can(?:no|')t|am unable|don'?t)"
    r")",
    re.IGNORECASE,
)
_REFUSAL_FINISH = "content_filter"
_TYPOGRAPHIC_APOSTROPHE = "\u2019"
LOGPROB_FLOOR = -1000.0  # p = e^-1000 is zero; clipping keeps sums of junk values finite


@dataclass(frozen=True)
class AnswerSignals:
    """What was read from one answer."""

    finish_reason: str | None  # "length" = truncated
    empty: bool
    refusal: bool
    invalid_json: bool | None  # None unless the request asked for JSON
    mean_logprob: float | None  # over the answer's tokens, when the provider sent them
    min_logprob: float | None
    learned: float | None  # P(correct) from the learned scorer, when one is loaded


@dataclass(frozen=True)
class Assessment:
    """One combined confidence in [0, 1], the signals behind it and the deciding one."""

    confidence: float
    signals: AnswerSignals
    # unreadable | empty | refusal | truncated | invalid_json | logprobs | scorer | no_signal
    reason: str
    escalate: bool  # confidence < threshold


_UNREADABLE = AnswerSignals(
    finish_reason=None,
    empty=True,
    refusal=False,
    invalid_json=None,
    mean_logprob=None,
    min_logprob=None,
    learned=None,
)


class AnswerEvaluator:
    """Scores a provider's answer to a request; pure, never raises on odd input."""

    def __init__(self, config: EvaluatorConfig, scorer: LearnedScorer | None = None) -> None:
        self._config = config
        self._scorer = scorer

    @property
    def config(self) -> EvaluatorConfig:
        """The weighing in force."""
        return self._config

    @property
    def needs_embedding(self) -> bool:
        """A learned scorer that reads an embedding is loaded."""
        return self._scorer is not None and self._scorer.needs_embedding

    def text_to_embed(self, request: Mapping[str, object], response: Mapping[str, object]) -> str:
        """The text the scorer wants embedded ("" when none, or nothing readable)."""
        if self._scorer is None:
            return ""
        answer = _answer(response)
        return self._scorer.text_to_embed(prompt_text(request), answer.text or "")

    def assess(
        self,
        request: Mapping[str, object],
        response: Mapping[str, object],
        embedding: npt.NDArray[np.float32] | None = None,
    ) -> Assessment:
        """Read the answer's signals and combine them into one confidence."""
        answer = _answer(response)
        if answer.unreadable:
            return self._verdict(0.0, _UNREADABLE, "unreadable")
        text = answer.text or ""
        mean_lp, min_lp = _logprob_summary(answer.logprobs)
        signals = AnswerSignals(
            finish_reason=answer.finish_reason,
            empty=not text.strip() and not answer.has_tool_calls,
            refusal=answer.refusal or _looks_like_refusal(text, self._config.refusal_max_chars),
            invalid_json=_invalid_json(request, text),
            mean_logprob=mean_lp,
            min_logprob=min_lp,
            learned=self._learned(request, text, embedding),
        )
        failure = self._failure(signals, client_capped=_client_capped(request))
        if failure is not None:
            return self._verdict(0.0, signals, failure)
        graded: list[tuple[float, str]] = []
        if mean_lp is not None and min_lp is not None:
            graded.append((self._logprob_confidence(mean_lp, min_lp), "logprobs"))
        if signals.learned is not None:
            graded.append((signals.learned, "scorer"))
        if not graded:
            return self._verdict(self._config.no_signal_confidence, signals, "no_signal")
        confidence, reason = min(graded)
        return self._verdict(confidence, signals, reason)

    def _failure(self, signals: AnswerSignals, *, client_capped: bool) -> str | None:
        if signals.refusal:  # first: OpenAI's refusal field comes with null content
            return "refusal"
        if signals.empty:
            return "empty"
        cut = signals.finish_reason == "length" and not client_capped
        if cut and self._config.truncated_is_failure:
            return "truncated"
        if signals.invalid_json:
            return "invalid_json"
        return None

    def _logprob_confidence(self, mean_logprob: float, min_logprob: float) -> float:
        c = self._config
        from_mean = _ramp(math.exp(mean_logprob), c.logprob_mean_floor, c.logprob_mean_ceiling)
        from_min = _ramp(min_logprob, c.logprob_min_floor, c.logprob_min_ceiling)
        return min(from_mean, from_min)

    def _learned(
        self,
        request: Mapping[str, object],
        text: str,
        embedding: npt.NDArray[np.float32] | None,
    ) -> float | None:
        if self._scorer is None or not text.strip():
            return None
        if self._scorer.needs_embedding and embedding is None:
            return None  # the caller could not embed: judge on the other signals
        try:
            return self._scorer.probability(prompt_text(request), text, embedding)
        except ValueError:  # an embedding of the wrong width: the caller's bug, not the answer's
            return None

    def _verdict(self, confidence: float, signals: AnswerSignals, reason: str) -> Assessment:
        confidence = min(1.0, max(0.0, confidence))
        return Assessment(
            confidence=confidence,
            signals=signals,
            reason=reason,
            escalate=confidence < self._config.threshold,
        )


@dataclass(frozen=True)
class _Answer:
    """The parts of choices[0] the evaluator reads."""

    unreadable: bool
    text: str | None = None
    finish_reason: str | None = None
    refusal: bool = False
    has_tool_calls: bool = False
    logprobs: tuple[float, ...] = ()


def _answer(response: object) -> _Answer:
    """choices[0] of a chat or completions response, leniently."""
    if not isinstance(response, Mapping):
        return _Answer(unreadable=True)
    choices = response.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        return _Answer(unreadable=True)
    choice = choices[0]
    if not isinstance(choice, Mapping):
        return _Answer(unreadable=True)
    finish = choice.get("finish_reason")
    finish_reason = finish if isinstance(finish, str) else None
    message = choice.get("message")
    if isinstance(message, Mapping):  # chat completions
        content = message.get("content")
        refusal = message.get("refusal")
        tool_calls = message.get("tool_calls")
        text = _content_text(content)
        if text is None:
            return _Answer(unreadable=True)
        return _Answer(
            unreadable=False,
            text=text,
            finish_reason=finish_reason,
            refusal=(isinstance(refusal, str) and bool(refusal.strip()))
            or finish_reason == _REFUSAL_FINISH,
            has_tool_calls=isinstance(tool_calls, Sequence) and bool(tool_calls),
            logprobs=_chat_logprobs(choice.get("logprobs")),
        )
    text_field = choice.get("text")
    if isinstance(text_field, str):  # completions
        return _Answer(
            unreadable=False,
            text=text_field,
            finish_reason=finish_reason,
            refusal=finish_reason == _REFUSAL_FINISH,
            logprobs=_completion_logprobs(choice.get("logprobs")),
        )
    return _Answer(unreadable=True)


def _content_text(content: object) -> str | None:
    """A message's content as text: a string, null (""), or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(str(part["text"]))
        return "".join(parts)
    return None


def _chat_logprobs(logprobs: object) -> tuple[float, ...]:
    """logprobs.content[*].logprob (chat completions)."""
    if not isinstance(logprobs, Mapping):
        return ()
    content = logprobs.get("content")
    if not isinstance(content, Sequence) or isinstance(content, str):
        return ()
    return _finite([t.get("logprob") for t in content if isinstance(t, Mapping)])


def _completion_logprobs(logprobs: object) -> tuple[float, ...]:
    """logprobs.token_logprobs (legacy completions; the first may be null)."""
    if not isinstance(logprobs, Mapping):
        return ()
    values = logprobs.get("token_logprobs")
    if not isinstance(values, Sequence) or isinstance(values, str):
        return ()
    return _finite(list(values))


def _finite(values: Sequence[object]) -> tuple[float, ...]:
    """The real numbers among `values`, clipped to [LOGPROB_FLOOR, 0]."""
    kept = []
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                kept.append(min(0.0, max(LOGPROB_FLOOR, number)))
    return tuple(kept)


def _logprob_summary(logprobs: Sequence[float]) -> tuple[float | None, float | None]:
    if not logprobs:
        return None, None
    return math.fsum(logprobs) / len(logprobs), min(logprobs)


def _looks_like_refusal(text: str, max_chars: int) -> bool:
    """A short answer that opens with a refusal; a long one that says "I can't" is an answer."""
    stripped = text.strip()
    if not 0 < len(stripped) <= max_chars:
        return False
    # Models write the typographic apostrophe as often as the plain one.
    return _REFUSAL.match(stripped[:200].replace(_TYPOGRAPHIC_APOSTROPHE, "'")) is not None


def _client_capped(request: object) -> bool:
    """Whether the client itself capped the answer's length."""
    if not isinstance(request, Mapping):
        return False
    return any(
        isinstance(request.get(key), int) and not isinstance(request.get(key), bool)
        for key in ("max_tokens", "max_completion_tokens")
    )


def _invalid_json(request: object, text: str) -> bool | None:
    """None unless JSON was asked for; then whether the answer fails to parse as asked."""
    if not isinstance(request, Mapping):
        return None
    response_format = request.get("response_format")
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind not in _JSON_FORMATS:
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return True
    return kind == "json_object" and not isinstance(parsed, dict)


def prompt_text(request: object) -> str:
    """The text the answer answers: the last user message, or the completions prompt."""
    if not isinstance(request, Mapping):
        return ""
    messages = request.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _content_text(message.get("content")) or ""
        return ""
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return ""


def _ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear between."""
    return min(1.0, max(0.0, (value - low) / (high - low)))

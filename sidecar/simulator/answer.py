"""What the simulated model says: token counting and deterministic answer generation.

Pure functions only. The answer to a prompt is a function of the prompt text, the style and
the seed, so a benchmark or test that sends the same prompt twice sees the same length,
text and logprobs, and the router's length predictor has something real to learn.

Token counting is deliberately simple and documented: a token is a run of word characters
(`\\w+`) or a single other non-space character, so "I'm here." is five tokens
(`I`, `'`, `m`, `here`, `.`). Prompt and completion use the same rule,
so `usage` adds up and `max_tokens` truncates at exactly that many tokens.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Style = Literal["echo", "lorem", "concise", "verbose"]
FinishReason = Literal["stop", "length"]

STYLES: tuple[Style, ...] = ("echo", "lorem", "concise", "verbose")

_TOKEN = re.compile(r"\w+|[^\w\s]")
# Same units as _TOKEN, but each piece keeps the whitespace before it, the way BPE tokens
# carry their leading space, so joining the pieces rebuilds the text.
_TOKEN_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")

# Prompts that ask for a lot get long answers and greetings get short ones, so output length
# is predictable from what the prompt is like, as it is with real models.
_DEMANDING = re.compile(
    r"\b(explain|describe|write|implement|essay|story|compare|analy[sz]e|detail(ed)?|"
    r"step[- ]by[- ]step|summari[sz]e|code|program|derive|prove)\b",
    re.IGNORECASE,
)
_SHORT_PROMPT_TOKENS = 6

_LENGTH_RANGES: dict[Style, tuple[int, int]] = {
    "concise": (8, 40),
    "lorem": (30, 200),
    "verbose": (250, 700),
}

_LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
    "in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
    "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est"
)
_PLAIN_TEXT = (
    "the answer depends on how the system is set up and what you need from it first "
    "consider which parts matter most then check each step carefully a simple approach "
    "works well in most cases but larger inputs may need more care this means you should "
    "measure before changing anything and keep the result easy to verify in practice "
    "teams often start small add tests and improve the design over time because clear "
    "code is cheaper to maintain"
)
_LOREM = tuple(_LOREM_TEXT.split())
_PLAIN = tuple(_PLAIN_TEXT.split())

_HEDGES = (
    "I'm not sure, but it might be {word}.",
    "I don't know for certain. Possibly {word}?",
    "Sorry, I can't answer that reliably.",
    "Maybe {word}, maybe not. It is hard to say.",
    "It could be {word}, though I may be wrong.",
)

_WEAK_LOGPROB = (1.5, 3.5)  # drawn as negative: mean about -2.5
# Token surprisal (-logprob) is drawn from an exponential distribution, as it roughly is
# for real models: mostly likely tokens, now and then a far less likely one. A confident
# answer's mean surprisal is 0.08 nats (a typical token 92 % likely); a shaky answer reads
# like any other but the model was unsure while writing it: 0.9 nats (40 %). The answers'
# mean logprobs separate over tens of tokens and overlap over a few.
_CONFIDENT_MEAN_SURPRISAL = 0.08
_SHAKY_MEAN_SURPRISAL = 0.9
_MAX_SURPRISAL = 12.0
_CONFIDENT_ALTERNATIVE_GAP = (3.0, 8.0)
_WEAK_ALTERNATIVE_LOGPROB = (1.8, 3.2)


@dataclass(frozen=True)
class TokenChoice:
    """One candidate token and its log probability."""

    text: str
    logprob: float


@dataclass(frozen=True)
class Token:
    """A generated token, its logprob and the most likely candidates at its position."""

    text: str
    logprob: float
    top: tuple[TokenChoice, ...]


@dataclass(frozen=True)
class Answer:
    """The full completion the simulated model produces for one request."""

    tokens: tuple[Token, ...]
    finish_reason: FinishReason
    weak: bool
    shaky: bool = False

    @property
    def text(self) -> str:
        """The completion as one string."""
        return "".join(token.text for token in self.tokens)


def count_tokens(text: str) -> int:
    """Number of tokens in `text` under the simulator's documented rule."""
    return len(_TOKEN.findall(text))


def split_tokens(text: str) -> list[str]:
    """`text` cut into tokens, each keeping its leading whitespace."""
    return _TOKEN_PIECE.findall(text)


def is_weak(prompt: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """Whether the prompt matches one of the patterns the model is weak on."""
    return any(pattern.search(prompt) for pattern in patterns)


def is_shaky(prompt: str, seed: int, share: float) -> bool:
    """Whether the model is unsure of this prompt: a fixed `share` of prompts, by hash."""
    if share <= 0:
        return False
    fraction = (_prompt_seed(seed, "shaky\0" + prompt) % 1_000_000) / 1_000_000
    return fraction < share


def compose_answer(
    prompt: str,
    echo_text: str,
    *,
    style: Style,
    weak: bool,
    seed: int,
    max_tokens: int,
    top_k: int,
    shaky: bool = False,
) -> Answer:
    """The deterministic answer to `prompt`, cut at `max_tokens`, with `top_k` candidates.

    A weak answer is a hedge with very low logprobs; a shaky one is ordinary text whose
    logprobs say the model was unsure (module constants).
    """
    rng = random.Random(_prompt_seed(seed, prompt))
    if weak:
        text = rng.choice(_HEDGES).format(word=rng.choice(_LOREM))
    elif style == "echo":
        text = echo_text
    else:
        text = _filler(rng, style, _target_length(rng, style, prompt))
    pieces = split_tokens(text)
    finish_reason: FinishReason = "stop"
    if len(pieces) > max_tokens:
        pieces = pieces[:max_tokens]
        finish_reason = "length"
    shaky = shaky and not weak
    tokens = tuple(
        _scored_token(rng, piece, weak=weak, shaky=shaky, top_k=top_k) for piece in pieces
    )
    return Answer(tokens=tokens, finish_reason=finish_reason, weak=weak, shaky=shaky)


def _prompt_seed(seed: int, prompt: str) -> int:
    # hashlib, not hash(): str hashes change with PYTHONHASHSEED between processes.
    digest = hashlib.blake2b(f"{seed}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _target_length(rng: random.Random, style: Style, prompt: str) -> int:
    low, high = _LENGTH_RANGES[style]
    length = rng.randint(low, high)
    if _DEMANDING.search(prompt):
        return int(length * 2.5)
    if count_tokens(prompt) <= _SHORT_PROMPT_TOKENS:
        return max(3, length // 4)
    return length


def _filler(rng: random.Random, style: Style, length: int) -> str:
    """Sentences of filler words until at least `length` tokens, ending on a full stop."""
    vocabulary = _LOREM if style == "lorem" else _PLAIN
    paragraphs: list[str] = []
    sentences: list[str] = []
    total = 0
    while total < length:
        words = [rng.choice(vocabulary) for _ in range(rng.randint(5, 14))]
        if len(words) > 8 and rng.random() < 0.4:
            words[rng.randint(2, len(words) - 3)] += ","
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        total += count_tokens(sentence)
        if style == "verbose" and len(sentences) >= 4:
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _scored_token(rng: random.Random, piece: str, *, weak: bool, shaky: bool, top_k: int) -> Token:
    if weak:
        logprob = -rng.uniform(*_WEAK_LOGPROB)
    else:
        mean = _SHAKY_MEAN_SURPRISAL if shaky else _CONFIDENT_MEAN_SURPRISAL
        logprob = -min(_MAX_SURPRISAL, rng.expovariate(1 / mean))
    if top_k == 0:
        return Token(text=piece, logprob=logprob, top=())
    lead = piece[: len(piece) - len(piece.lstrip())] or " "
    candidates = [TokenChoice(piece, logprob)]
    seen = {piece}
    while len(candidates) < top_k:
        alternative = lead + rng.choice(_LOREM)
        if alternative in seen:
            continue
        seen.add(alternative)
        if weak or shaky:
            alt_logprob = -rng.uniform(*_WEAK_ALTERNATIVE_LOGPROB)
        else:
            alt_logprob = logprob - rng.uniform(*_CONFIDENT_ALTERNATIVE_GAP)
        candidates.append(TokenChoice(alternative, alt_logprob))
    candidates.sort(key=lambda choice: choice.logprob, reverse=True)
    return Token(text=piece, logprob=logprob, top=tuple(candidates))

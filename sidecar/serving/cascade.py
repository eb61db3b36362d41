"""The cascade's edge: hold a cheap answer back, judge it, and escalate a shaky one through Envoy.

How a cascade runs (README "Cascade" has the picture):
1. The router's ext_proc filter decides a request (say: `small`) and `plan_cascade` says
   it cascades. `prepare` remembers what an escalation will need (the client's body and
   headers, the tier to go to, the deadline) under the decision id, asks the provider
   for token logprobs when it can give them, and returns the request header that makes
   Envoy match the cascade route.
2. That route switches on a second ext_proc filter for this request only: Envoy holds
   the answer back and hands it over whole. `check` judges it (the evaluator's
   confidence; an error status is confidence 0). Confident, or nothing left to try: it
   goes to the client untouched but for `x-router-cascade` (and the logprobs we asked
   for, removed).
3. Shaky: `escalate` sends the client's own request again to Envoy's listener, with an
   `x-router-escalation` ticket naming the next tier. Envoy routes, authenticates,
   retries, traces and counts it like any request; the router's filter honours the
   ticket only when its HMAC (a key this process made at start) and its deadline check
   out, so no client can forge one. The stronger answer replaces the cheap one: status,
   headers and body. The client receives exactly one response.
Bounds: `max_attempts` models per request and `budget_s` from the first decision; when
either runs out, the best answer so far is returned (the cheap one, if the escalation
failed). An attempt that may be escalated gets half the time left (Envoy's
x-envoy-upstream-rq-timeout-ms), so a hung cheap provider cannot spend the whole budget.
Requests that do not cascade pay nothing: Envoy sends no answer to the sidecar.
With learning on (`cascade.learn`), each escalation is remembered (sidecar/cascade/
memory.py), and `recall` sends a prompt like a remembered one straight to its tier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import aiohttp
import numpy as np
import numpy.typing as npt

from sidecar.cascade.memory import CascadeMemory
from sidecar.core.cascade import CascadePlan, CascadeRules, plan_cascade
from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import RoutingTable
from sidecar.core.policy import Intent
from sidecar.core.request import Endpoint
from sidecar.errors import RouterError
from sidecar.serving.body import decode_body, encode_body
from sidecar.serving.service import Routed

log = logging.getLogger(__name__)

# Request header (internal only: Envoy strips it from clients) that selects the cascade
# route, whose per-route config switches the answer-holding filter on.
CHECK_HEADER = "x-router-cascade-check"
# Request header carrying an escalation ticket; the router removes it before the provider.
TICKET_HEADER = "x-router-escalation"
# Response header: what the cascade did, e.g. `small(0.41)>frontier`.
CASCADE_HEADER = "x-router-cascade"
DECISION_HEADER = "x-router-decision-id"
# Envoy's own per-request timeout header, set on an attempt that cascades (Envoy strips a
# client's copy before any filter runs, so only the router's counts).
TIMEOUT_HEADER = "x-envoy-upstream-rq-timeout-ms"
# An attempt that may still be escalated gets at most this share of the time left, so a
# hung cheap provider leaves the rest for the next tier instead of spending the budget.
ATTEMPT_SHARE = 0.5
_TICKET_VERSION = "v1"
# Never forwarded on an escalation: hop-by-hop, framing, Envoy's and the router's own.
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
        "content-length", "host", "expect", "traceparent", "tracestate", "x-request-id",
        "accept-encoding",
    }
)  # fmt: skip
# Kept from the cheap answer when the stronger one replaces it (Envoy's own).
_KEEP_RESPONSE_HEADERS = frozenset({"date", "server"})


class Judgement(Protocol):
    """What an evaluator says of one answer."""

    @property
    def confidence(self) -> float: ...

    @property
    def reason(self) -> str: ...


class AnswerJudge(Protocol):
    """The evaluator the cascade asks (sidecar/cascade/evaluator.py)."""

    @property
    def needs_embedding(self) -> bool: ...

    def text_to_embed(self, request: Mapping[str, object], response: Mapping[str, object]) -> str:
        """The text the learned scorer reads, embedded by the router's encoder."""
        ...

    def assess(
        self,
        request: Mapping[str, object],
        response: Mapping[str, object],
        embedding: npt.NDArray[np.float32] | None = None,
    ) -> Judgement:
        """The answer's confidence, 0..1."""
        ...


Embed = Callable[[str], Awaitable[npt.NDArray[np.float32]]]


@dataclass(frozen=True)
class Ticket:
    """A verified escalation: which tier, which attempt, until when."""

    tier: str
    attempt: int
    deadline: float  # unix seconds


@dataclass(frozen=True)
class Pending:
    """What an escalation of one held-back answer will need."""

    payload: dict[str, object]  # the client's request, as it sent it
    path: str
    tier: str
    next_tier: str
    attempt: int
    deadline: float
    added_logprobs: bool
    vector: npt.NDArray[np.float32] | None = None  # the prompt's, when the memory learns
    # The client's headers worth forwarding: the answer-holding filter sees them all
    # (`note_request`); the router's filter only the few it routes on.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """What the router's filter adds to a request that cascades."""

    set_headers: tuple[tuple[str, str], ...]
    body: bytes | None  # the body to forward, when logprobs were asked for


@dataclass(frozen=True)
class Reply:
    """An answer as the client will get it: a replacement, or the original with headers."""

    status: int | None = None  # None: keep the answer's status
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    body: bytes | None = None  # None: keep the answer's body


@dataclass(frozen=True)
class Check:
    """The verdict on a held-back answer: return it (`reply`), or escalate it."""

    reply: Reply | None
    escalation: Escalation | None = None


@dataclass(frozen=True)
class Escalation:
    """A shaky answer about to be replaced by the next tier's."""

    pending: Pending
    step: str  # this attempt, for the header: "small(0.41)"
    answer_status: int
    answer_headers: dict[str, str]
    answer_body: bytes
    seconds_left: float
    strip_logprobs: bool = False


@dataclass
class CascadeStats:
    """Counts by outcome, for tests, each also handed to `listener` (the metrics)."""

    outcomes: dict[str, int] = field(default_factory=dict)
    listener: Callable[[str], None] = lambda outcome: None

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.listener(outcome)


class TicketSigner:
    """Signs and verifies escalation tickets with a key only this process knows."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def sign(self, ticket: Ticket) -> str:
        payload = json.dumps(
            {"tier": ticket.tier, "attempt": ticket.attempt, "deadline": ticket.deadline},
            separators=(",", ":"),
        ).encode()
        encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{_TICKET_VERSION}.{encoded}.{self._mac(encoded)}"

    def verify(self, value: str, now: float) -> Ticket | None:
        """The ticket, or None when it is forged, malformed or past its deadline."""
        version, _, rest = value.strip().partition(".")
        encoded, _, mac = rest.partition(".")
        if version != _TICKET_VERSION or not hmac.compare_digest(mac, self._mac(encoded)):
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            ticket = Ticket(str(raw["tier"]), int(raw["attempt"]), float(raw["deadline"]))
        except (ValueError, KeyError, TypeError):
            return None
        return ticket if ticket.deadline > now else None

    def _mac(self, encoded: str) -> str:
        digest = hmac.new(self._key, encoded.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Cascade:
    """Holds cheap answers back, judges them, and escalates the shaky ones through Envoy."""

    def __init__(
        self,
        *,
        rules: CascadeRules,
        table: RoutingTable,
        catalogue: Catalogue,
        judge: AnswerJudge,
        threshold: float,
        envoy_url: str,
        embed: Embed | None = None,
        ask_logprobs: bool = True,
        max_pending: int = 1024,
        clock: Callable[[], float] = time.time,
        signer: TicketSigner | None = None,
        on_outcome: Callable[[str], None] = lambda outcome: None,
        memory: CascadeMemory | None = None,
    ) -> None:
        self.rules = rules
        self.stats = CascadeStats(listener=on_outcome)
        self._table = table
        self._catalogue = catalogue
        self._judge = judge
        self._threshold = threshold
        self._envoy_url = envoy_url.rstrip("/")
        self._embed = embed
        self._ask_logprobs = ask_logprobs
        self._max_pending = max_pending
        self._clock = clock
        self._signer = signer or TicketSigner()
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._memory = memory
        self._http: aiohttp.ClientSession | None = None

    # --- the router's filter: the request --------------------------------------------

    def ticket(self, headers: Mapping[str, str]) -> Ticket | None:
        """The request's escalation ticket, if it carries a valid one."""
        value = headers.get(TICKET_HEADER)
        if value is None:
            return None
        ticket = self._signer.verify(value, self._clock())
        if ticket is None:
            self.stats.count("ticket_refused")
            log.warning("an %s header was refused (forged, malformed or expired)", TICKET_HEADER)
        return ticket

    def plan(
        self, routed: Routed, intent: Intent, ticket: Ticket | None, route_opted_in: bool
    ) -> CascadePlan | None:
        """The cascade plan of a decided request (None: no facts, a fallback decision)."""
        if routed.facts is None:
            return None
        attempt = ticket.attempt if ticket is not None else 1
        left = ticket.deadline - self._clock() if ticket is not None else None
        return plan_cascade(
            routed.decision,
            routed.facts,
            intent,
            self.rules,
            self._table,
            attempt=attempt,
            route_opted_in=route_opted_in or ticket is not None,
            seconds_left=left,
        )

    async def recall(
        self, routed: Routed
    ) -> tuple[tuple[str, float] | None, npt.NDArray[np.float32] | None]:
        """What the memory says of a request about to cascade: (tier, similarity) or None,
        and the prompt's vector for `prepare` (None when the memory is off)."""
        if self._memory is None or self._embed is None or routed.facts is None:
            return None, None
        text = routed.facts.routing_text
        if not text.strip():
            return None, None
        vector = await self._embed(text)
        recalled = self._memory.recall(vector)
        if recalled is not None:
            self.stats.count("recalled")
        return recalled, vector

    def prepare(
        self,
        routed: Routed,
        plan: CascadePlan,
        path: str,
        ticket: Ticket | None,
        vector: npt.NDArray[np.float32] | None = None,
    ) -> Prepared | None:
        """Remember what an escalation will need; None when nothing may be held back now."""
        payload, facts = routed.payload, routed.facts
        if plan.next_tier is None or payload is None or facts is None:
            return None
        self._expire()
        if len(self._pending) >= self._max_pending:
            self.stats.count("skipped_full")
            return None
        decision = routed.decision
        forwarded = routed.body
        added = False
        provider = self._catalogue.provider(decision.upstream)
        if self._ask_logprobs and provider.logprobs and "logprobs" not in payload:
            # What the service forwards (the client's body, `model` maybe rewritten), and
            # logprobs: a flag in chat, a count of top candidates in completions.
            sent = (
                {**payload, "model": decision.model} if decision.model_rewritten else dict(payload)
            )
            sent["logprobs"] = True if facts.endpoint is Endpoint.CHAT else 1
            forwarded, added = encode_body(sent), True
        now = self._clock()
        deadline = ticket.deadline if ticket is not None else now + self.rules.budget_s
        self._pending[decision.decision_id] = Pending(
            payload=dict(payload),
            path=path,
            tier=decision.tier,
            next_tier=plan.next_tier,
            attempt=ticket.attempt if ticket is not None else 1,
            deadline=deadline,
            added_logprobs=added,
            vector=vector,
        )
        attempt_ms = max(1, int((deadline - now) * ATTEMPT_SHARE * 1000))
        headers_to_set = (
            (CHECK_HEADER, "1"),
            (TIMEOUT_HEADER, str(attempt_ms)),
            # The evaluator reads the answer: ask for it uncompressed (any client accepts
            # identity; a gzip body would read as unreadable and always escalate).
            ("accept-encoding", "identity"),
        )
        return Prepared(set_headers=headers_to_set, body=forwarded if added else None)

    # --- the answer-holding filter: the request, then the response ---------------------

    def note_request(self, headers: Mapping[str, str]) -> None:
        """The held request's headers as they leave Envoy: what an escalation forwards.

        The one place they come from: the answer-holding filter sees every header, the
        router's filter only the few it routes on (attributes with the body).
        """
        decision_id = headers.get(DECISION_HEADER, "")
        pending = self._pending.get(decision_id)
        if pending is not None:
            self._pending[decision_id] = replace(pending, headers=_forwardable(headers))

    async def check(self, status: int, headers: Mapping[str, str], body: bytes) -> Check:
        """Judge a held-back answer: return it as is, or escalate it."""
        pending = self._pending.pop(headers.get(DECISION_HEADER, ""), None)
        if pending is None:
            self.stats.count("unknown")
            return Check(Reply())  # not ours to judge (expired, or another sidecar's)
        response = _json_object(body)
        if status != 200 or response is None:
            confidence, reason = 0.0, f"status {status}" if status != 200 else "unreadable"
        else:
            embedding = None
            if self._judge.needs_embedding and self._embed is not None:
                embedding = await self._embed(self._judge.text_to_embed(pending.payload, response))
            judgement = self._judge.assess(pending.payload, response, embedding)
            confidence, reason = judgement.confidence, judgement.reason
        step = f"{pending.tier}({confidence:.2f})"
        left = pending.deadline - self._clock()
        strip = pending.added_logprobs and response is not None
        if confidence >= self._threshold:
            self.stats.count("accepted")
            return Check(_kept(step, response if strip else None))
        if left <= 0:
            self.stats.count("budget_spent")
            return Check(_kept(f"{step}>budget spent", response if strip else None))
        log.debug("cascade: %s answer shaky (%s); escalating", pending.tier, reason)
        return Check(
            None,
            Escalation(pending, step, status, dict(headers), body, left, strip_logprobs=strip),
        )

    async def escalate(
        self, escalation: Escalation, trace: Mapping[str, str] | None = None
    ) -> Reply:
        """Send the request on to the next tier through Envoy; the best answer wins.

        `trace`: Envoy's W3C trace headers for the held answer, so the escalation joins
        the client request's trace.
        """
        pending = escalation.pending
        ticket = Ticket(pending.next_tier, pending.attempt + 1, pending.deadline)
        headers = {**pending.headers, **(trace or {}), TICKET_HEADER: self._signer.sign(ticket)}
        timeout = aiohttp.ClientTimeout(total=max(0.001, escalation.seconds_left))
        try:
            async with self._session().post(
                self._envoy_url + pending.path,
                data=encode_body(pending.payload),
                headers=headers,
                timeout=timeout,
            ) as answer:
                body = await answer.read()
                status, answer_headers = answer.status, dict(answer.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.count("escalation_failed")
            why = "timed out" if isinstance(exc, TimeoutError) else "failed"
            return self._best_so_far(escalation, f"{pending.next_tier}: {why}")
        if not 200 <= status < 300:
            self.stats.count("escalation_failed")
            return self._best_so_far(escalation, f"{pending.next_tier}: {status}")
        self.stats.count("escalated")
        if self._memory is not None and pending.vector is not None:
            self._memory.remember(pending.vector, pending.next_tier)
        inner = answer_headers.get(CASCADE_HEADER) or pending.next_tier
        lowered = {name.lower(): value for name, value in answer_headers.items()}
        # aiohttp has already decoded a compressed answer: the body goes back plain.
        lowered.pop("content-encoding", None)
        removed = tuple(
            name
            for name in (n.lower() for n in escalation.answer_headers)
            if name not in lowered and name not in _KEEP_RESPONSE_HEADERS and ":" not in name
        )
        set_headers = tuple(
            (name, value)
            for name, value in lowered.items()
            if name not in _HOP_BY_HOP and name not in _KEEP_RESPONSE_HEADERS
        )
        return Reply(
            status=status,
            set_headers=(
                *set_headers,
                ("content-length", str(len(body))),
                (CASCADE_HEADER, f"{escalation.step}>{inner}"),
            ),
            remove_headers=removed,
            body=body,
        )

    def _best_so_far(self, escalation: Escalation, failure: str) -> Reply:
        """The held answer, when the escalation brought nothing better."""
        strip = escalation.strip_logprobs and escalation.answer_status == 200
        response = _json_object(escalation.answer_body) if strip else None
        return _kept(f"{escalation.step}>{failure}", response)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        """Close the HTTP client (at shutdown)."""
        if self._http is not None:
            await self._http.close()

    def _expire(self) -> None:
        """Forget answers whose deadline passed long ago (their response never came)."""
        now = self._clock()
        while self._pending:
            decision_id, oldest = next(iter(self._pending.items()))
            if oldest.deadline + self.rules.budget_s > now:
                break
            del self._pending[decision_id]
            self.stats.count("expired")


def _kept(header: str, response: dict[str, object] | None) -> Reply:
    """The held answer, returned: its header, and without logprobs we asked for."""
    if response is None:
        return Reply(set_headers=((CASCADE_HEADER, header),))
    choices = response.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and "logprobs" in choice:
            choice["logprobs"] = None
    body = encode_body(response)
    return Reply(
        set_headers=((CASCADE_HEADER, header), ("content-length", str(len(body)))), body=body
    )


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        return decode_body(body)
    except RouterError:
        return None


def _forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers an escalation sends again (its Host, so the same virtual host)."""
    kept = {
        name: value
        for name, value in headers.items()
        if not name.startswith((":", "x-envoy-", "x-router-cascade", TICKET_HEADER))
        and name not in _HOP_BY_HOP
        and name not in {"x-router-upstream", "x-router-route", "x-router-model", DECISION_HEADER}
    }
    if ":authority" in headers:
        kept["host"] = headers[":authority"]
    return kept

"""The cascade: which requests cascade (pure), and the edge that judges and escalates answers.

The edge's escalations go to a real HTTP server on loopback standing in for Envoy's
listener; the clock is a fake one the tests move.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import web

from sidecar.core.cascade import CascadeRules, heavier_tier, plan_cascade
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import Decision, RoutingTable
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import Endpoint, RequestFacts
from sidecar.serving.cascade import (
    CASCADE_HEADER,
    CHECK_HEADER,
    DECISION_HEADER,
    TICKET_HEADER,
    Cascade,
    Ticket,
    TicketSigner,
)
from sidecar.serving.service import Routed

TABLE = RoutingTable(tiers=("small", "mid", "frontier"), default_route="mid")
CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.1), logprobs=True),
        Provider("middle", "mid-70b", "mid", Price(1, 1)),
        Provider("big", "big-1t", "frontier", Price(5, 15)),
    ),
    clusters=frozenset({"tiny", "middle", "big"}),
)
FACTS = RequestFacts(Endpoint.CHAT, "router:cost", "hi", 1, None, False)
COST = Intent(Policy.COST)
CHAT = "/v1/chat/completions"


def _decision(tier: str = "small", cluster: str = "tiny", decision_id: str = "d1") -> Decision:
    provider = CATALOGUE.provider(cluster)
    return Decision(
        decision_id=decision_id,
        upstream=cluster,
        route=tier,
        tier=tier,
        policy=Policy.COST,
        model=provider.model,
        model_rewritten=True,
        reason="test",
        predicted_output_tokens=10,
        candidates=(),
    )


# --- which requests cascade (sidecar/core/cascade.py) ------------------------------------


def test_a_cost_request_cascades_to_the_next_tier_up() -> None:
    plan = plan_cascade(_decision(), FACTS, COST, CascadeRules(), TABLE)
    assert plan.cascades and plan.next_tier == "mid"
    assert heavier_tier("mid", TABLE) == "frontier" and heavier_tier("frontier", TABLE) is None


@pytest.mark.parametrize(
    ("facts", "intent", "kwargs", "why"),
    [
        (replace(FACTS, stream=True), COST, {}, "a stream is not held back"),
        (FACTS, Intent(Policy.COST, explicit_model="tiny-1b"), {}, "the client named its model"),
        (FACTS, Intent(Policy.BALANCED), {}, "policy balanced does not cascade"),
        (FACTS, COST, {"attempt": 2}, "attempt 2 of at most 2"),
        (FACTS, COST, {"seconds_left": 0.0}, "time budget is spent"),
    ],
)
def test_what_does_not_cascade_says_why(
    facts: RequestFacts, intent: Intent, kwargs: dict[str, object], why: str
) -> None:
    plan = plan_cascade(_decision(), facts, intent, CascadeRules(), TABLE, **kwargs)  # type: ignore[arg-type]
    assert not plan.cascades and why in plan.why


def test_a_route_opts_in_and_the_heaviest_tier_stops() -> None:
    balanced = Intent(Policy.BALANCED)
    rules = CascadeRules(max_attempts=3)
    assert plan_cascade(_decision(), FACTS, balanced, rules, TABLE, route_opted_in=True).cascades
    top = _decision("frontier", "big")
    assert "heaviest tier" in plan_cascade(top, FACTS, COST, rules, TABLE).why
    # The second attempt (an escalation) may go on while attempts and time remain.
    mid = _decision("mid", "middle")
    assert plan_cascade(mid, FACTS, COST, rules, TABLE, attempt=2).next_tier == "frontier"


# --- tickets -----------------------------------------------------------------------------


def test_a_ticket_verifies_only_unchanged_in_time_and_with_the_same_key() -> None:
    signer = TicketSigner()
    ticket = Ticket("frontier", 2, deadline=100.0)
    value = signer.sign(ticket)
    assert signer.verify(value, now=99.0) == ticket
    assert signer.verify(value, now=100.0) is None  # expired
    assert TicketSigner().verify(value, now=99.0) is None  # another process's key
    version, payload, mac = value.split(".")
    forged = json.dumps({"tier": "frontier", "attempt": 1, "deadline": 1e12}).encode()
    tampered = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    assert signer.verify(f"{version}.{tampered}.{mac}", now=99.0) is None
    for junk in ("", "v1", "v1..", "v2.a.b", "v1.!!.??", f"{version}.{payload}"):
        assert signer.verify(junk, now=0.0) is None


# --- the edge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    confidence: float
    reason: str


class FakeJudge:
    """Confidence from the answer's text: `sure` 0.9, anything else 0.2."""

    needs_embedding = False

    def text_to_embed(self, request: Mapping[str, object], response: Mapping[str, object]) -> str:
        return ""

    def assess(
        self,
        request: Mapping[str, object],
        response: Mapping[str, object],
        embedding: npt.NDArray[np.float32] | None = None,
    ) -> Verdict:
        choices = response.get("choices")
        assert isinstance(choices, list)
        text = choices[0]["message"]["content"]
        return Verdict(0.9 if text == "sure" else 0.2, "fake")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _answer(text: str, *, logprobs: object = None) -> bytes:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode()


@dataclass
class FakeEnvoy:
    """The listener escalations go to: records them, answers as told."""

    url: str = ""
    status: int = 200
    seen: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)
    clients: list[Cascade] = field(default_factory=list)
    compressed: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.seen.append((headers, json.loads(await request.read())))
        reply = web.Response(
            status=self.status,
            body=_answer("strong answer"),
            content_type="application/json",
            headers={"x-router-upstream": "middle", "x-sim-name": "middle"},
        )
        if "gzip" in request.headers.get("accept-encoding", ""):
            reply.enable_compression(web.ContentCoding.gzip)  # as OpenAI does
            self.compressed = True
        return reply


@pytest.fixture
async def envoy() -> AsyncIterator[FakeEnvoy]:
    fake = FakeEnvoy()
    app = web.Application()
    app.router.add_post(CHAT, fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    for cascade in fake.clients:
        await cascade.close()
    await runner.cleanup()


def _cascade(envoy: FakeEnvoy, clock: Clock, **kwargs: object) -> Cascade:
    cascade = Cascade(
        rules=CascadeRules(budget_s=30.0),
        table=TABLE,
        catalogue=CATALOGUE,
        judge=FakeJudge(),
        threshold=0.5,
        envoy_url=envoy.url,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )
    envoy.clients.append(cascade)
    return cascade


CLIENT_BODY = json.dumps({"model": "router:cost", "messages": [{"role": "user", "content": "hi"}]})
CLIENT_HEADERS = {
    ":authority": "quality.localhost",
    ":path": CHAT,
    "authorization": "Bearer client-key",
    "x-router-policy": "cost",
    "content-length": "77",
    "x-envoy-expected-rq-timeout-ms": "5",
}


def _prepared(cascade: Cascade, decision: Decision | None = None) -> bytes | None:
    decision = decision or _decision()
    rewritten = json.dumps({**json.loads(CLIENT_BODY), "model": decision.model}).encode()
    payload = json.loads(CLIENT_BODY)
    routed = Routed(decision=decision, verdict=None, body=rewritten, facts=FACTS, payload=payload)
    plan = cascade.plan(routed, COST, None, route_opted_in=False)
    assert plan is not None and plan.next_tier == "mid"
    prepared = cascade.prepare(routed, plan, CHAT, None)
    assert prepared is not None
    # The request as the answer-holding filter sees it: the client's headers, and what
    # the router's filter set on it.
    cascade.note_request(
        {**CLIENT_HEADERS, **dict(prepared.set_headers), DECISION_HEADER: decision.decision_id,
         "x-router-upstream": decision.upstream}
    )  # fmt: skip
    # The cheap attempt may use half the budget (30 s): a hung provider leaves the rest.
    assert prepared.set_headers == (
        (CHECK_HEADER, "1"),
        ("x-envoy-upstream-rq-timeout-ms", "15000"),
        ("accept-encoding", "identity"),  # the evaluator reads the answer
    )
    return prepared.body


async def test_a_confident_answer_is_returned_with_the_logprobs_it_did_not_ask_for_removed(
    envoy: FakeEnvoy,
) -> None:
    cascade = _cascade(envoy, Clock())
    forwarded = _prepared(cascade)
    assert forwarded is not None and json.loads(forwarded)["logprobs"] is True  # tiny has them
    assert json.loads(forwarded)["model"] == "tiny-1b"
    answer = _answer("sure", logprobs={"content": [{"token": "sure", "logprob": -0.01}]})
    check = await cascade.check(200, {DECISION_HEADER: "d1"}, answer)
    assert check.escalation is None and check.reply is not None
    reply = check.reply
    assert dict(reply.set_headers)[CASCADE_HEADER] == "small(0.90)"
    assert reply.body is not None and json.loads(reply.body)["choices"][0]["logprobs"] is None
    assert dict(reply.set_headers)["content-length"] == str(len(reply.body))
    assert envoy.seen == [] and cascade.stats.outcomes == {"accepted": 1}


async def test_a_shaky_answer_is_replaced_by_the_next_tiers_through_envoy(
    envoy: FakeEnvoy,
) -> None:
    clock = Clock()
    cascade = _cascade(envoy, clock)
    _prepared(cascade)
    cheap_headers = {DECISION_HEADER: "d1", "x-sim-name": "tiny", "x-cheap-only": "1"}
    check = await cascade.check(200, cheap_headers, _answer("maybe"))
    assert check.reply is None and check.escalation is not None
    reply = await cascade.escalate(check.escalation)
    assert reply.status == 200 and reply.body == _answer("strong answer")  # decoded
    headers = dict(reply.set_headers)
    assert envoy.compressed and "content-encoding" not in headers
    assert headers[CASCADE_HEADER] == "small(0.20)>mid"
    assert headers["x-router-upstream"] == "middle" and headers["x-sim-name"] == "middle"
    assert "x-cheap-only" in reply.remove_headers
    (sent_headers, sent_body), = envoy.seen  # fmt: skip
    assert sent_body == json.loads(CLIENT_BODY)  # the client's own request, alias and all
    assert sent_headers["host"] == "quality.localhost"  # the same virtual host
    assert sent_headers["authorization"] == "Bearer client-key"
    assert sent_headers["x-router-policy"] == "cost"
    assert not any(name.lower().startswith("x-envoy-") for name in sent_headers)
    assert "identity" not in sent_headers.get("accept-encoding", "")  # not the client's
    ticket = cascade.ticket({TICKET_HEADER: sent_headers[TICKET_HEADER]})
    assert ticket == Ticket("mid", 2, deadline=1030.0)
    assert cascade.stats.outcomes == {"escalated": 1}


async def test_a_provider_error_escalates_and_a_failed_escalation_keeps_the_best_answer(
    envoy: FakeEnvoy,
) -> None:
    cascade = _cascade(envoy, Clock())
    _prepared(cascade)
    check = await cascade.check(500, {DECISION_HEADER: "d1"}, b'{"error": {}}')
    assert check.escalation is not None and check.escalation.step == "small(0.00)"
    assert (await cascade.escalate(check.escalation)).status == 200

    envoy.status = 503
    _prepared(cascade)
    check = await cascade.check(200, {DECISION_HEADER: "d1"}, _answer("maybe"))
    assert check.escalation is not None
    reply = await cascade.escalate(check.escalation)
    assert reply.status is None  # the cheap answer stands
    assert dict(reply.set_headers)[CASCADE_HEADER] == "small(0.20)>mid: 503"
    assert reply.body is not None and json.loads(reply.body)["choices"][0]["message"] == {
        "role": "assistant",
        "content": "maybe",
    }


async def test_no_time_left_returns_the_answer_and_unknown_answers_pass(envoy: FakeEnvoy) -> None:
    clock = Clock()
    cascade = _cascade(envoy, clock)
    _prepared(cascade)
    clock.now += 31
    check = await cascade.check(200, {DECISION_HEADER: "d1"}, _answer("maybe"))
    assert check.reply is not None and check.escalation is None
    assert dict(check.reply.set_headers)[CASCADE_HEADER] == "small(0.20)>budget spent"
    passed = await cascade.check(200, {DECISION_HEADER: "unknown"}, _answer("maybe"))
    assert passed.reply is not None and passed.reply.set_headers == () and passed.reply.body is None


async def test_a_full_table_of_pending_answers_turns_cascading_off_for_new_requests(
    envoy: FakeEnvoy,
) -> None:
    cascade = _cascade(envoy, Clock(), max_pending=1)
    _prepared(cascade)
    payload = json.loads(CLIENT_BODY)
    routed = Routed(
        decision=_decision(decision_id="d2"), verdict=None, body=None, facts=FACTS, payload=payload
    )
    plan = cascade.plan(routed, COST, None, route_opted_in=False)
    assert plan is not None
    assert cascade.prepare(routed, plan, CHAT, None) is None
    assert cascade.stats.outcomes == {"skipped_full": 1}

"""The routing service: one call from raw request to decision, shared by every edge.

The ext_proc adapter and the project's own `Decide` API both call `RoutingService.route`.
It parses the request, resolves the policy once, asks the semantic classifier (when the
policy needs it), reads the current provider snapshot, calls the pure decision core, and
rewrites the body's `model` field when the client asked for a router alias. It holds no
per-request state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import Decision, ProviderSnapshot, RoutingTable, decide
from sidecar.core.limits import Limits
from sidecar.core.policy import ALIAS_PREFIX, AUTO_MODEL, Intent, Policy, PolicyAsk, resolve_intent
from sidecar.core.request import Endpoint, RequestFacts, endpoint_for_path, parse_request
from sidecar.core.vote import FAILED, RouteVerdict, abstention
from sidecar.errors import NotFoundError, RequestError, RouterError
from sidecar.semantic.classifier import StageTimer, untimed
from sidecar.serving.body import BIG_BODY_BYTES, BodyBudget, decode_body, encode_body

log = logging.getLogger(__name__)

# A client's choice of policy for one request.
POLICY_HEADER = "x-router-policy"
# A client's limits for one request: the expected cost (US dollars, a positive decimal)
# and the expected time to the whole answer (milliseconds, a positive whole number).
# Like x-router-policy they reach the provider too; they hold nothing secret.
MAX_COST_HEADER = "x-router-max-cost-usd"
MAX_LATENCY_HEADER = "x-router-max-latency-ms"
# A decimal number of dollars, as people write it: 0.002, .5, 3, 1e-4.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_WHOLE = re.compile(r"[0-9]{1,9}")
_MAX_LATENCY_MS = 86_400_000  # a day
_NO_LIMITS = Limits()
# gRPC metadata an Envoy route can attach (ExtProcPerRoute grpc_initial_metadata).
ROUTE_POLICY_METADATA = "x-router-route-policy"
# ... and "true" here makes every request of the route cascade (README "Cascade").
ROUTE_CASCADE_METADATA = "x-router-route-cascade"


class Classifier(Protocol):
    """Anything that can classify the routing text of a prompt."""

    async def classify(self, text: str) -> RouteVerdict:
        """Classify one routing text."""
        ...


@dataclass(frozen=True)
class Routed:
    """A decision, the classifier's verdict behind it, and the body to forward.

    `body` is None when the body goes on unchanged; `facts`, `intent` and `payload` (the
    client's decoded body, for a cascade's escalation) are None for a fallback.
    """

    decision: Decision
    verdict: RouteVerdict | None
    body: bytes | None
    facts: RequestFacts | None = None
    intent: Intent | None = None
    payload: Mapping[str, object] | None = None


class RoutingService:
    """Turns a raw OpenAI request into a routing decision."""

    def __init__(
        self,
        *,
        table: RoutingTable,
        catalogue: Catalogue,
        snapshot: Callable[[], ProviderSnapshot],
        classifier: Classifier | None = None,
        log_prompts: bool = False,
        on_error: Callable[[str], None] = lambda kind: None,
        body_budget_bytes: int = 16 << 20,
        stage_timer: StageTimer = untimed,
    ) -> None:
        table.validate(catalogue)
        self._timer = stage_timer
        self._log_prompts = log_prompts
        self._on_error = on_error
        self._budget = BodyBudget(body_budget_bytes)
        self._table = table
        self._catalogue = catalogue
        self._snapshot = snapshot
        self._classifier = classifier

    @property
    def catalogue(self) -> Catalogue:
        """The provider catalogue this service routes over."""
        return self._catalogue

    def models_body(self) -> bytes:
        """`GET /v1/models` as OpenAI answers it: every name a client may put in `model`.

        The router's own names (`auto`, `router:<policy>`) first, then each provider
        model and alias once, owned by the cluster that serves it first.
        """
        owners: dict[str, str] = {AUTO_MODEL: "inference-router"}
        owners.update({f"{ALIAS_PREFIX}{p.value}": "inference-router" for p in Policy})
        for provider in self._catalogue.providers:
            for name in (provider.model, *provider.aliases):
                owners.setdefault(name, provider.cluster)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": owner}
            for name, owner in owners.items()
        ]
        return json.dumps({"object": "list", "data": data}).encode()

    async def route(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        route_policy: str | None = None,
        decision_id: str | None = None,
        escalate_to: str | None = None,
    ) -> Routed:
        """Decide where one request goes; raises RequestError for a bad request.

        `escalate_to`: a cascade's escalation, decided on that tier (sidecar/core/cascade.py).
        """
        decision_id = decision_id or new_decision_id()
        endpoint = endpoint_for_path(path)
        if endpoint is None:
            raise NotFoundError(
                f"the router does not route {path.split('?', 1)[0]!r}", code="unknown_url"
            )
        if len(body) < BIG_BODY_BYTES:
            return await self._route(
                endpoint, headers, body, route_policy, decision_id, escalate_to
            )
        # Big: decoded and re-encoded off the loop, a bounded number of bytes at a time.
        async with self._budget.hold(len(body)):
            return await self._route(
                endpoint, headers, body, route_policy, decision_id, escalate_to
            )

    async def _route(
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        body: bytes,
        route_policy: str | None,
        decision_id: str,
        escalate_to: str | None = None,
    ) -> Routed:
        offload = len(body) >= BIG_BODY_BYTES
        with self._timer("parse"):
            payload = await asyncio.to_thread(decode_body, body) if offload else decode_body(body)
            facts = parse_request(endpoint, payload)
            asks = [
                PolicyAsk(name, source)
                for name, source in (
                    (headers.get(POLICY_HEADER), POLICY_HEADER),
                    (route_policy, "route policy"),
                )
                if name
            ]
            intent = resolve_intent(facts.model, asks, self._table.default_policy)
            limits = limits_from_headers(headers)
        verdict = None
        needs_semantics = escalate_to is None and _needs_semantics(facts, intent)
        if self._classifier is not None and needs_semantics:
            verdict = await self._classify(self._classifier, facts.routing_text, decision_id)
        with self._timer("policy"):
            decision = decide(
                facts,
                intent,
                decision_id=decision_id,
                table=self._table,
                catalogue=self._catalogue,
                snapshot=self._snapshot(),
                verdict=verdict,
                limits=limits,
                escalate_to=escalate_to,
            )
        new_body = None
        if decision.model_rewritten:
            new_body = (
                await asyncio.to_thread(_rewrite_model, payload, decision.model)
                if offload
                else _rewrite_model(payload, decision.model)
            )
        if self._log_prompts:
            # Opt-in only (settings.log_prompts): prompts can hold personal data.
            log.info(
                "decision %s: %s -> %s, routing text %r",
                decision.decision_id, decision.route, decision.upstream, facts.routing_text,
            )  # fmt: skip
        else:
            log.debug(
                "decision %s: %s -> %s (%s)",
                decision.decision_id, decision.route, decision.upstream, decision.reason,
            )  # fmt: skip
        return Routed(
            decision=decision,
            verdict=verdict,
            body=new_body,
            facts=facts,
            intent=intent,
            payload=payload,
        )

    def fallback(self, body: bytes, decision_id: str, headers: Mapping[str, str]) -> Routed:
        """The default policy's decision, for a request whose routing failed unexpectedly.

        The request still goes somewhere sensible (the default route's cheapest provider
        within the client's limits) with a decision id the log line shares, and a router
        alias in `model` is still rewritten so the provider understands it. Raises the
        RequestError of limits that are malformed or that no provider fits, as routing would.
        """
        facts = RequestFacts(Endpoint.CHAT, AUTO_MODEL, "", 1, None, False)
        decision = decide(
            facts,
            Intent(self._table.default_policy),
            decision_id=decision_id,
            table=self._table,
            catalogue=self._catalogue,
            snapshot=self._snapshot(),
            limits=limits_from_headers(headers),
        )
        decision = replace(
            decision, reason=f"internal error, see the sidecar log; {decision.reason}"
        )
        new_body = None
        try:
            payload = decode_body(body)
        except RouterError:
            payload = None
        model = payload.get("model", AUTO_MODEL) if payload is not None else None
        if payload is not None and isinstance(model, str) and _is_router_alias(model):
            new_body = _rewrite_model(payload, decision.model)
        return Routed(decision=decision, verdict=None, body=new_body)

    async def _classify(self, classifier: Classifier, text: str, decision_id: str) -> RouteVerdict:
        try:
            return await classifier.classify(text)
        except Exception:
            # The classifier is an optimisation: its failure costs this request its
            # semantic route, never the request itself.
            log.exception("decision %s: the classifier failed; deciding without it", decision_id)
            self._on_error("classifier")
            return abstention(FAILED)


def limits_from_headers(headers: Mapping[str, str]) -> Limits:
    """The client's limits from its headers; a malformed value is a RequestError naming it.

    A blank header is no limit, as a blank x-router-policy is no policy.
    """
    if MAX_COST_HEADER not in headers and MAX_LATENCY_HEADER not in headers:
        return _NO_LIMITS  # most requests
    cost = headers.get(MAX_COST_HEADER, "").strip()
    latency = headers.get(MAX_LATENCY_HEADER, "").strip()
    max_cost = float(cost) if _DECIMAL.fullmatch(cost) else math.nan
    if cost and not (math.isfinite(max_cost) and max_cost > 0):
        raise _bad_limit(MAX_COST_HEADER, cost, "a positive decimal number of US dollars")
    max_latency_ms = int(latency) if _WHOLE.fullmatch(latency) else 0
    if latency and not 0 < max_latency_ms <= _MAX_LATENCY_MS:
        raise _bad_limit(
            MAX_LATENCY_HEADER, latency, f"a whole number of milliseconds, 1 to {_MAX_LATENCY_MS}"
        )
    return Limits(
        max_cost_usd=max_cost if cost else None,
        max_latency_s=max_latency_ms / 1000 if latency else None,
    )


def _bad_limit(header: str, value: str, expected: str) -> RequestError:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return RequestError(
        f"{header} must be {expected}, got {shown!r}", code="invalid_limit", param=header
    )


def new_decision_id() -> str:
    """A fresh id naming one decision in headers, logs and the API."""
    return uuid.uuid4().hex


def _is_router_alias(model: str) -> bool:
    return model == AUTO_MODEL or model.startswith(ALIAS_PREFIX)


def _needs_semantics(facts: RequestFacts, intent: Intent) -> bool:
    return (
        intent.explicit_model is None
        and intent.policy is Policy.BALANCED
        and bool(facts.routing_text.strip())
    )


def _rewrite_model(payload: dict[str, object], model: str) -> bytes:
    rewritten = dict(payload)
    rewritten["model"] = model
    return encode_body(rewritten)

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
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import Decision, ProviderSnapshot, RoutingTable, decide
from sidecar.core.policy import ALIAS_PREFIX, AUTO_MODEL, Intent, Policy, PolicyAsk, resolve_intent
from sidecar.core.request import Endpoint, RequestFacts, endpoint_for_path, parse_request
from sidecar.core.vote import FAILED, RouteVerdict, abstention
from sidecar.errors import NotFoundError, RouterError
from sidecar.serving.body import BIG_BODY_BYTES, BodyBudget, decode_body, encode_body

log = logging.getLogger(__name__)

# A client's choice of policy for one request.
POLICY_HEADER = "x-router-policy"
# gRPC metadata an Envoy route can attach (ExtProcPerRoute grpc_initial_metadata).
ROUTE_POLICY_METADATA = "x-router-route-policy"


class Classifier(Protocol):
    """Anything that can classify the routing text of a prompt."""

    async def classify(self, text: str) -> RouteVerdict:
        """Classify one routing text."""
        ...


@dataclass(frozen=True)
class Routed:
    """A decision, the classifier's verdict behind it, and the body to forward.

    `body` is None when the body goes on unchanged.
    """

    decision: Decision
    verdict: RouteVerdict | None
    body: bytes | None


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
    ) -> None:
        table.validate(catalogue)
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
    ) -> Routed:
        """Decide where one request goes; raises RequestError for a bad request."""
        decision_id = decision_id or new_decision_id()
        endpoint = endpoint_for_path(path)
        if endpoint is None:
            raise NotFoundError(
                f"the router does not route {path.split('?', 1)[0]!r}", code="unknown_url"
            )
        if len(body) < BIG_BODY_BYTES:
            return await self._route(endpoint, headers, body, route_policy, decision_id)
        # Big: decoded and re-encoded off the loop, a bounded number of bytes at a time.
        async with self._budget.hold(len(body)):
            return await self._route(endpoint, headers, body, route_policy, decision_id)

    async def _route(
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        body: bytes,
        route_policy: str | None,
        decision_id: str,
    ) -> Routed:
        offload = len(body) >= BIG_BODY_BYTES
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
        verdict = None
        if self._classifier is not None and _needs_semantics(facts, intent):
            verdict = await self._classify(self._classifier, facts.routing_text, decision_id)
        decision = decide(
            facts,
            intent,
            decision_id=decision_id,
            table=self._table,
            catalogue=self._catalogue,
            snapshot=self._snapshot(),
            verdict=verdict,
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
        return Routed(decision=decision, verdict=verdict, body=new_body)

    def fallback(self, body: bytes, decision_id: str) -> Routed:
        """The default policy's decision, for a request whose routing failed unexpectedly.

        The request still goes somewhere sensible (the default route's cheapest provider)
        with a decision id the log line shares, and a router alias in `model` is still
        rewritten so the provider understands it.
        """
        facts = RequestFacts(Endpoint.CHAT, AUTO_MODEL, "", 1, None, False)
        decision = decide(
            facts,
            Intent(self._table.default_policy),
            decision_id=decision_id,
            table=self._table,
            catalogue=self._catalogue,
            snapshot=self._snapshot(),
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

"""The routing service: one call from raw request to decision, shared by every edge.

The ext_proc adapter and the project's own `Decide` API both call `RoutingService.route`.
It parses the request, resolves the policy once, asks the semantic classifier (when the
policy needs it), reads the current provider snapshot, calls the pure decision core, and
rewrites the body's `model` field when the client asked for a router alias. It holds no
per-request state.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import Decision, ProviderSnapshot, RoutingTable, decide
from sidecar.core.policy import Intent, Policy, PolicyAsk, resolve_intent
from sidecar.core.request import RequestFacts, endpoint_for_path, parse_body, parse_request
from sidecar.core.vote import RouteVerdict
from sidecar.errors import NotFoundError

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
    ) -> None:
        table.validate(catalogue)
        self._log_prompts = log_prompts
        self._table = table
        self._catalogue = catalogue
        self._snapshot = snapshot
        self._classifier = classifier

    @property
    def catalogue(self) -> Catalogue:
        """The provider catalogue this service routes over."""
        return self._catalogue

    async def route(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        route_policy: str | None = None,
    ) -> Routed:
        """Decide where one request goes; raises RequestError for a bad request."""
        endpoint = endpoint_for_path(path)
        if endpoint is None:
            raise NotFoundError(
                f"the router does not route {path.split('?', 1)[0]!r}", code="unknown_url"
            )
        payload = parse_body(body)
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
            verdict = await self._classifier.classify(facts.routing_text)
        decision = decide(
            facts,
            intent,
            decision_id=uuid.uuid4().hex,
            table=self._table,
            catalogue=self._catalogue,
            snapshot=self._snapshot(),
            verdict=verdict,
        )
        new_body = _rewrite_model(payload, decision.model) if decision.model_rewritten else None
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


def _needs_semantics(facts: RequestFacts, intent: Intent) -> bool:
    return (
        intent.explicit_model is None
        and intent.policy is Policy.BALANCED
        and bool(facts.routing_text.strip())
    )


def _rewrite_model(payload: dict[str, object], model: str) -> bytes:
    rewritten = dict(payload)
    rewritten["model"] = model
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()

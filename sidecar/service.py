"""The routing service: one call from raw request to decision, shared by every edge.

The ext_proc adapter and the project's own `Decide` API both call `RoutingService.route`.
It parses the request, asks the semantic classifier (when the policy needs it), reads
the current provider snapshot, calls the pure decision core, and rewrites the body's
`model` field when the client asked for a router alias. It holds no per-request state.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.catalogue import Catalogue
from sidecar.decision import (
    Decision,
    Policy,
    ProviderSnapshot,
    RoutingTable,
    SemanticRoute,
    decide,
    policy_for,
)
from sidecar.errors import RequestError
from sidecar.request import RequestFacts, endpoint_for_path, parse_body, parse_request

log = logging.getLogger(__name__)

POLICY_HEADER = "x-router-policy"


@dataclass(frozen=True)
class NeighbourView:
    """One nearest exemplar as shown in an explanation (never its text)."""

    route: str
    similarity: float


@dataclass(frozen=True)
class Classification:
    """The semantic classifier's verdict with the evidence behind it."""

    semantic: SemanticRoute
    route_scores: Mapping[str, float]
    neighbours: tuple[NeighbourView, ...]
    threshold: float
    abstain_reason: str | None
    # True when the classifier was skipped to shed load (see semantic.py).
    shed: bool = False


class PromptClassifier(Protocol):
    """Anything that can classify the routing text of a prompt."""

    async def classify(self, text: str) -> Classification:
        """Classify one routing text."""
        ...


@dataclass(frozen=True)
class Routed:
    """A decision plus the body to forward (None when the body is unchanged)."""

    decision: Decision
    classification: Classification | None
    body: bytes | None


class RoutingService:
    """Turns a raw OpenAI request into a routing decision."""

    def __init__(
        self,
        *,
        table: RoutingTable,
        catalogue: Catalogue,
        snapshot: Callable[[], ProviderSnapshot],
        classifier: PromptClassifier | None = None,
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
            raise RequestError(
                f"the router does not route {path.split('?', 1)[0]!r}",
                status=404,
                code="unknown_url",
            )
        payload = parse_body(body)
        facts = parse_request(endpoint, payload)
        header_policy = headers.get(POLICY_HEADER)
        intent = policy_for(facts.model, header_policy, route_policy, self._table)
        classification = None
        if self._needs_semantics(facts, intent.policy, intent.explicit_model):
            assert self._classifier is not None
            classification = await self._classifier.classify(facts.routing_text)
        decision = decide(
            facts,
            decision_id=uuid.uuid4().hex,
            table=self._table,
            catalogue=self._catalogue,
            snapshot=self._snapshot(),
            semantic=classification.semantic if classification else None,
            header_policy=header_policy,
            route_policy=route_policy,
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
        return Routed(decision=decision, classification=classification, body=new_body)

    def _needs_semantics(
        self, facts: RequestFacts, policy: Policy, explicit_model: str | None
    ) -> bool:
        return (
            self._classifier is not None
            and explicit_model is None
            and policy is Policy.BALANCED
            and bool(facts.routing_text.strip())
        )


def _rewrite_model(payload: dict[str, object], model: str) -> bytes:
    rewritten = dict(payload)
    rewritten["model"] = model
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()

"""The decision core: request facts + provider state in, one routing decision out.

This module is pure. It reads no clock, no network and no files; everything it needs
arrives as arguments (the parsed request, the semantic route if one was computed, the
catalogue, an immutable snapshot of live provider state) and everything it decides
leaves in the returned `Decision`, including the reasons. That keeps it fast to test
and makes every decision reproducible from its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from sidecar.catalogue import Catalogue, Price, Provider
from sidecar.errors import ConfigError, RequestError
from sidecar.request import RequestFacts

AUTO_MODEL = "auto"
ALIAS_PREFIX = "router:"
# Output length assumed when nothing better is known (no neighbours, no max_tokens).
DEFAULT_OUTPUT_TOKENS = 256.0


class Policy(Enum):
    """How to trade cost, latency and quality for one request."""

    BALANCED = "balanced"
    SPEED = "speed"
    QUALITY = "quality"
    COST = "cost"

    @classmethod
    def parse(cls, name: str, *, source: str) -> Policy:
        """Parse a policy name, blaming `source` (a header, an alias) when it is unknown."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise RequestError(
                f"unknown routing policy {name!r} in {source}; expected one of {known}",
                code="invalid_policy",
                param=source,
            ) from None


@dataclass(frozen=True)
class RouteTarget:
    """Where a semantic route sends traffic: a tier, or an explicit list of clusters."""

    tier: str | None = None
    clusters: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingTable:
    """Operator settings the core routes by (validated against the catalogue at start)."""

    tiers: tuple[str, ...]
    default_route: str
    default_policy: Policy = Policy.BALANCED
    routes: Mapping[str, RouteTarget] = field(default_factory=dict)

    def target(self, route: str) -> RouteTarget:
        """The target of a route; a route named like a tier goes to that tier."""
        return self.routes.get(route, RouteTarget(tier=route))

    def validate(self, catalogue: Catalogue) -> None:
        """Refuse settings that would name a tier or cluster Envoy does not have."""
        for tier in self.tiers:
            if not catalogue.in_tier(tier):
                raise ConfigError(f"tiers: tier {tier!r} has no provider cluster in the catalogue")
        for route in (*self.routes, self.default_route):
            target = self.target(route)
            for cluster in target.clusters:
                if cluster not in catalogue.clusters:
                    raise ConfigError(f"routes.{route}: cluster {cluster!r} is not in Envoy config")
                catalogue.provider(cluster)
            if target.tier is not None and target.tier not in self.tiers:
                raise ConfigError(f"routes.{route}: tier {target.tier!r} is not one of tiers")
            if target.tier is None and not target.clusters:
                raise ConfigError(f"routes.{route}: needs a tier or a list of clusters")


@dataclass(frozen=True)
class ProviderState:
    """Live facts about one provider; None means 'not known or too stale to trust'."""

    healthy: bool = True
    queue_waiting: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    price: Price | None = None


@dataclass(frozen=True)
class ProviderSnapshot:
    """An immutable view of every provider's live state at one moment."""

    states: Mapping[str, ProviderState] = field(default_factory=dict)

    def state(self, cluster: str) -> ProviderState:
        """The state of a cluster, or the neutral default."""
        return self.states.get(cluster, _NEUTRAL)


_NEUTRAL = ProviderState()


@dataclass(frozen=True)
class SemanticRoute:
    """The semantic classifier's answer, as far as the core needs it."""

    route: str | None
    confidence: float
    predicted_output_tokens: float | None = None


@dataclass(frozen=True)
class CandidateCost:
    """One provider considered for a request, with its expected cost and latency."""

    cluster: str
    model: str
    tier: str
    expected_cost_usd: float
    expected_latency_s: float
    healthy: bool


@dataclass(frozen=True)
class Decision:
    """Where to send one request, what to send, and why."""

    decision_id: str
    upstream: str
    route: str
    tier: str
    policy: Policy
    model: str
    model_rewritten: bool
    reason: str
    predicted_output_tokens: float
    candidates: tuple[CandidateCost, ...]


@dataclass(frozen=True)
class _Intent:
    policy: Policy
    explicit_model: str | None


def policy_for(
    model: str, header_policy: str | None, route_policy: str | None, table: RoutingTable
) -> _Intent:
    """Resolve the policy from the model alias, then the header, then the Envoy route."""
    if model == AUTO_MODEL:
        chosen = table.default_policy
        if header_policy:
            chosen = Policy.parse(header_policy, source="x-router-policy")
        elif route_policy:
            chosen = Policy.parse(route_policy, source="route policy")
        return _Intent(chosen, None)
    if model.startswith(ALIAS_PREFIX):
        return _Intent(Policy.parse(model[len(ALIAS_PREFIX) :], source="model"), None)
    return _Intent(table.default_policy, model)


def decide(
    facts: RequestFacts,
    *,
    decision_id: str,
    table: RoutingTable,
    catalogue: Catalogue,
    snapshot: ProviderSnapshot,
    semantic: SemanticRoute | None = None,
    header_policy: str | None = None,
    route_policy: str | None = None,
) -> Decision:
    """Choose the upstream cluster and model for one request."""
    intent = policy_for(facts.model, header_policy, route_policy, table)
    output_tokens = _predicted_output_tokens(facts, semantic)
    if intent.explicit_model is not None:
        providers = catalogue.serving(intent.explicit_model)
        if not providers:
            raise RequestError(
                f"the model {intent.explicit_model!r} does not exist or is not routed here",
                status=404,
                code="model_not_found",
                param="model",
            )
        route, reason = "explicit", f"client asked for model {intent.explicit_model!r}"
    else:
        route, reason = _route_for(intent.policy, semantic, table)
        providers = _providers_for(route, intent.policy, table, catalogue)
    candidates = tuple(_cost(p, facts, output_tokens, snapshot) for p in providers)
    chosen = _choose(candidates, intent.policy)
    provider = catalogue.provider(chosen.cluster)
    return Decision(
        decision_id=decision_id,
        upstream=chosen.cluster,
        route=route,
        tier=provider.tier,
        policy=intent.policy,
        model=provider.model,
        model_rewritten=provider.model != facts.model,
        reason=f"{reason}; {_why(chosen, candidates, intent.policy)}",
        predicted_output_tokens=output_tokens,
        candidates=candidates,
    )


def _route_for(
    policy: Policy, semantic: SemanticRoute | None, table: RoutingTable
) -> tuple[str, str]:
    if policy is Policy.QUALITY:
        return table.tiers[-1], "policy quality goes to the heaviest tier"
    if policy in (Policy.COST, Policy.SPEED):
        return table.tiers[0], f"policy {policy.value} goes to the lightest tier"
    if semantic is not None and semantic.route is not None:
        return semantic.route, f"semantic route {semantic.route} (p={semantic.confidence:.2f})"
    if semantic is not None:
        return table.default_route, f"classifier abstained; default route {table.default_route}"
    return table.default_route, f"default route {table.default_route}"


def _providers_for(
    route: str, policy: Policy, table: RoutingTable, catalogue: Catalogue
) -> tuple[Provider, ...]:
    target = table.target(route)
    if target.clusters:
        return tuple(catalogue.provider(c) for c in target.clusters)
    tier = target.tier if target.tier is not None else table.default_route
    providers = catalogue.in_tier(tier)
    if not providers:
        raise ConfigError(f"route {route!r}: tier {tier!r} has no provider")
    return providers


def _predicted_output_tokens(facts: RequestFacts, semantic: SemanticRoute | None) -> float:
    predicted = DEFAULT_OUTPUT_TOKENS
    if semantic is not None and semantic.predicted_output_tokens is not None:
        predicted = semantic.predicted_output_tokens
    if facts.max_tokens is not None:
        predicted = min(predicted, float(facts.max_tokens))
    return predicted


def _cost(
    provider: Provider, facts: RequestFacts, output_tokens: float, snapshot: ProviderSnapshot
) -> CandidateCost:
    state = snapshot.state(provider.cluster)
    price = state.price or provider.price
    ttft = state.ttft_s if state.ttft_s is not None else provider.ttft_s
    rate = state.tokens_per_s if state.tokens_per_s is not None else provider.tokens_per_s
    service_s = ttft + output_tokens / rate
    # Each waiting request ahead of us holds a slot for about one service time.
    queue_s = (state.queue_waiting or 0.0) * service_s / provider.max_concurrency
    return CandidateCost(
        cluster=provider.cluster,
        model=provider.model,
        tier=provider.tier,
        expected_cost_usd=price.cost_usd(facts.prompt_tokens, output_tokens),
        expected_latency_s=queue_s + service_s,
        healthy=state.healthy,
    )


def _choose(candidates: tuple[CandidateCost, ...], policy: Policy) -> CandidateCost:
    pool = [c for c in candidates if c.healthy] or list(candidates)
    if policy is Policy.SPEED:
        return min(pool, key=lambda c: (c.expected_latency_s, c.expected_cost_usd))
    return min(pool, key=lambda c: (c.expected_cost_usd, c.expected_latency_s))


def _why(chosen: CandidateCost, candidates: tuple[CandidateCost, ...], policy: Policy) -> str:
    if len(candidates) == 1:
        return f"{chosen.cluster} is the only candidate"
    measure = "fastest" if policy is Policy.SPEED else "cheapest"
    return f"{chosen.cluster} is the {measure} of {len(candidates)} candidates"

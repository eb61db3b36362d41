"""The decision core: request facts + provider state in, one routing decision out.

This module is pure. It reads no clock, no network and no files; everything it needs
arrives as arguments (the parsed request, the semantic route if one was computed, the
catalogue, an immutable snapshot of live provider state, the client's limits) and
everything it decides leaves in the returned `Decision`, including the reasons. That
keeps it fast to test and makes every decision reproducible from its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.limits import NO_LIMITS, Limits, seconds, usd
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import RequestFacts
from sidecar.core.vote import FAILED, SHED, STAGE_STATIC, RouteVerdict
from sidecar.errors import ConfigError, NotFoundError, OutOfLimitsError

# Output length assumed when nothing better is known (no neighbours, no max_tokens).
DEFAULT_OUTPUT_TOKENS = 256.0
# `balanced` ranks candidates by expected cost x (1 + service time / 10 s + queue wait /
# 1 s). Serving time is what a provider is: 10 s more of it counts as twice the price.
# Waiting in a queue is what the router can avoid: one second of it already counts as
# twice the price, so a burst moves to the next-cheapest provider as soon as the
# cheapest one would make a request wait, instead of once its whole answer is slower.
# Measured on the policy benchmark (benchmarks/policies.py: cheap 1x, mid 1.2x, fast
# 2.3x the price): with one 10 s scale over the whole latency, balanced's p99 under a
# burst was only 1.4-1.9x better than always-cheapest's (README, "Policies measured").
BALANCED_LATENCY_SCALE_S = 10.0
BALANCED_QUEUE_SCALE_S = 1.0


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
    # Where the facts came from and how old they were, for the explanation.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderSnapshot:
    """An immutable view of every provider's live state at one moment."""

    states: Mapping[str, ProviderState] = field(default_factory=dict)

    def state(self, cluster: str) -> ProviderState:
        """The state of a cluster, or the neutral default."""
        return self.states.get(cluster, _NEUTRAL)


_NEUTRAL = ProviderState()


@dataclass(frozen=True)
class CandidateCost:
    """One provider considered for a request, with its expected cost and latency."""

    cluster: str
    model: str
    tier: str
    expected_cost_usd: float
    expected_latency_s: float  # queue wait + time to first token + generation
    # The price used, US dollars per million tokens: the live one when `notes` say so.
    price: Price
    healthy: bool
    queue_waiting: float | None = None
    queue_wait_s: float = 0.0  # the part of expected_latency_s spent waiting for a slot
    notes: tuple[str, ...] = ()


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


def decide(
    facts: RequestFacts,
    intent: Intent,
    *,
    decision_id: str,
    table: RoutingTable,
    catalogue: Catalogue,
    snapshot: ProviderSnapshot,
    verdict: RouteVerdict | None = None,
    limits: Limits = NO_LIMITS,
    escalate_to: str | None = None,
) -> Decision:
    """Choose the upstream cluster and model for one request.

    `escalate_to` names the tier a cascade sends a shaky answer's request to: that tier
    serves, the policy still choosing among its providers (sidecar/core/cascade.py).
    Raises NotFoundError for a model no provider serves, OutOfLimitsError when no
    provider that could serve the request fits the client's limits.
    """
    output_tokens = _predicted_output_tokens(facts, verdict)

    def costs(providers: Iterable[Provider]) -> tuple[CandidateCost, ...]:
        return tuple(_cost(p, facts, output_tokens, snapshot) for p in providers)

    if intent.explicit_model is not None:
        providers = catalogue.serving(intent.explicit_model)
        if not providers:
            raise NotFoundError(
                f"the model {intent.explicit_model!r} does not exist or is not routed here",
                code="model_not_found",
                param="model",
            )
        route, reason = "explicit", f"client asked for model {intent.explicit_model!r}"
        # Another model is never swapped in: health only orders this model's clusters.
        candidates = costs(providers)
        if not any(_fits(c, limits) for c in candidates):
            raise _out_of_limits(candidates, limits)
    else:
        if escalate_to is not None:
            route, reason = escalate_to, f"cascade: a shaky answer, escalated to {escalate_to}"
        else:
            route, reason = _route_for(intent.policy, verdict, table)
        home = costs(_providers_for(route, intent.policy, table, catalogue))
        candidates, reason = _serving_tier(
            home, reason, limits, table, lambda tier: costs(catalogue.in_tier(tier))
        )
    chosen = _choose(candidates, intent.policy, limits)
    provider = catalogue.provider(chosen.cluster)
    return Decision(
        decision_id=decision_id,
        upstream=chosen.cluster,
        route=route,
        tier=provider.tier,
        policy=intent.policy,
        model=provider.model,
        model_rewritten=provider.model != facts.model,
        reason=f"{reason}{_removed(candidates, limits)}; {_why(chosen, candidates, intent.policy)}",
        predicted_output_tokens=output_tokens,
        candidates=candidates,
    )


def _route_for(
    policy: Policy, verdict: RouteVerdict | None, table: RoutingTable
) -> tuple[str, str]:
    if policy is Policy.QUALITY:
        return table.tiers[-1], "policy quality goes to the heaviest tier"
    if policy in (Policy.COST, Policy.SPEED):
        return table.tiers[0], f"policy {policy.value} goes to the lightest tier"
    default = table.default_route
    if verdict is None:
        return default, f"default route {default}"
    if verdict.route is not None:
        how = f"p={verdict.confidence:.2f}"
        if verdict.stage == STAGE_STATIC:
            how += ", stage 1: static embeddings"
            how += ", encoder overloaded" if verdict.overloaded else ""
        return verdict.route, f"semantic route {verdict.route} ({how})"
    if verdict.abstain_reason == SHED:
        return default, f"classifier shed load (model busy); default route {default}"
    if verdict.abstain_reason == FAILED:
        return default, f"classifier failed (see the sidecar log); default route {default}"
    return default, f"classifier abstained ({verdict.abstain_reason}); default route {default}"


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


def _serving_tier(
    home: tuple[CandidateCost, ...],
    reason: str,
    limits: Limits,
    table: RoutingTable,
    tier_costs: Callable[[str], tuple[CandidateCost, ...]],
) -> tuple[tuple[CandidateCost, ...], str]:
    """The candidates that serve: the route's own, or the nearest tier's that can.

    First the nearest tier (the route's own first) with a healthy provider within the
    limits. When nothing healthy fits anywhere, the nearest with any provider within the
    limits (Envoy's own retries and health checks then have the last word); when nothing
    fits at all, OutOfLimitsError. Nearest by position in `table.tiers`; at equal
    distance the heavier tier wins, so a hand-over never lowers quality when it need not.
    """
    if any(_usable(c, limits) for c in home):
        return home, reason
    others = [(tier, tier_costs(tier)) for tier in _nearest_other_tiers(home, table)]
    problem = _why_not(home, limits)
    for tier, alternatives in others:
        if any(_usable(c, limits) for c in alternatives):
            serves = f"tier with one, {tier}," if limits.any else f"healthy tier {tier}"
            return alternatives, f"{reason}; {problem}, the nearest {serves} serves"
    within = " within the limits" if limits.any else ""
    if any(_fits(c, limits) for c in home):
        return home, f"{reason}; no healthy provider{within} in any tier"
    for tier, alternatives in others:
        if any(_fits(c, limits) for c in alternatives):
            return alternatives, (
                f"{reason}; {problem}; no healthy provider{within} in any tier, "
                f"the nearest tier within them, {tier}, serves"
            )
    every = home + tuple(c for _, alternatives in others for c in alternatives)
    raise _out_of_limits(every, limits)


def _nearest_other_tiers(home: tuple[CandidateCost, ...], table: RoutingTable) -> list[str]:
    tiers = {c.tier for c in home}
    position = min((table.tiers.index(t) for t in tiers if t in table.tiers), default=None)
    if position is None:
        position = (
            table.tiers.index(table.default_route) if table.default_route in table.tiers else 0
        )
    order = sorted(
        (i for i in range(len(table.tiers)) if table.tiers[i] not in tiers),
        key=lambda i: (abs(i - position), -i),
    )
    return [table.tiers[i] for i in order]


def _fits(candidate: CandidateCost, limits: Limits) -> bool:
    return not limits.breaches(candidate.expected_cost_usd, candidate.expected_latency_s)


def _usable(candidate: CandidateCost, limits: Limits) -> bool:
    return candidate.healthy and _fits(candidate, limits)


def _why_not(home: tuple[CandidateCost, ...], limits: Limits) -> str:
    """Why none of the route's own candidates can serve, naming each one's problem."""
    over = {c.cluster: limits.breaches(c.expected_cost_usd, c.expected_latency_s) for c in home}
    if not any(over.values()):
        unhealthy = ", ".join(sorted(c.cluster for c in home))
        return f"no healthy provider ({unhealthy} unhealthy)"
    parts = [
        f"{cluster}: {', '.join(breaches)}" if breaches else f"{cluster} unhealthy"
        for cluster, breaches in sorted(over.items())
    ]
    return f"no healthy provider within the limits ({'; '.join(parts)})"


def _removed(candidates: tuple[CandidateCost, ...], limits: Limits) -> str:
    """The serving candidates the limits took out of the running, for the reason."""
    removed = [
        f"{c.cluster} ({', '.join(breaches)})"
        for c in candidates
        if (breaches := limits.breaches(c.expected_cost_usd, c.expected_latency_s))
    ]
    return f"; the limits removed {', '.join(removed)}" if removed else ""


def _out_of_limits(candidates: tuple[CandidateCost, ...], limits: Limits) -> OutOfLimitsError:
    """The refusal, with the best figures on offer so the client can adjust its limits."""
    best: list[tuple[str, CandidateCost]] = []
    if limits.max_cost_usd is not None:
        best.append(("cheapest", min(candidates, key=lambda c: c.expected_cost_usd)))
    if limits.max_latency_s is not None:
        fastest = min(candidates, key=lambda c: c.expected_latency_s)
        if not best or best[0][1] is not fastest:
            best.append(("fastest", fastest))
        else:
            best[0] = ("cheapest and fastest", fastest)
    offers = "; ".join(
        f"the {what}, {c.cluster}, is expected to cost {usd(c.expected_cost_usd)} "
        f"and take {seconds(c.expected_latency_s)}"
        for what, c in best
    )
    return OutOfLimitsError(
        f"no provider can serve this request within {limits.describe()}: {offers}"
    )


def _predicted_output_tokens(facts: RequestFacts, verdict: RouteVerdict | None) -> float:
    predicted = DEFAULT_OUTPUT_TOKENS
    if verdict is not None and verdict.predicted_output_tokens is not None:
        predicted = verdict.predicted_output_tokens
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
    # The requests ahead are typical requests, not this one: each holds one of the
    # provider's `max_concurrency` slots for about a typical service time.
    typical_s = ttft + DEFAULT_OUTPUT_TOKENS / rate
    queue_s = (state.queue_waiting or 0.0) * typical_s / provider.max_concurrency
    return CandidateCost(
        cluster=provider.cluster,
        model=provider.model,
        tier=provider.tier,
        expected_cost_usd=price.cost_usd(facts.prompt_tokens, output_tokens),
        expected_latency_s=queue_s + service_s,
        price=price,
        healthy=state.healthy,
        queue_waiting=state.queue_waiting,
        queue_wait_s=queue_s,
        notes=state.notes,
    )


def _choose(candidates: tuple[CandidateCost, ...], policy: Policy, limits: Limits) -> CandidateCost:
    fitting = [c for c in candidates if _fits(c, limits)]
    pool = [c for c in fitting if c.healthy] or fitting
    if policy in (Policy.SPEED, Policy.QUALITY):  # quality: the heaviest tier, then fastest
        return min(pool, key=lambda c: (c.expected_latency_s, c.expected_cost_usd))
    if policy is Policy.BALANCED:
        return min(pool, key=lambda c: (balanced_score(c), c.expected_latency_s))
    return min(pool, key=lambda c: (c.expected_cost_usd, c.expected_latency_s))


def balanced_score(candidate: CandidateCost) -> float:
    """Expected cost, made dearer by serving time and more so by waiting (see the scales)."""
    service_s = candidate.expected_latency_s - candidate.queue_wait_s
    return candidate.expected_cost_usd * (
        1.0 + service_s / BALANCED_LATENCY_SCALE_S + candidate.queue_wait_s / BALANCED_QUEUE_SCALE_S
    )


def _why(chosen: CandidateCost, candidates: tuple[CandidateCost, ...], policy: Policy) -> str:
    facts = "; ".join(f"{c.cluster}: {', '.join(c.notes)}" for c in candidates if c.notes)
    facts = f" [{facts}]" if facts else ""
    if len(candidates) == 1:
        return f"{chosen.cluster} is the only candidate{facts}"
    measure = {
        Policy.SPEED: "fastest",
        Policy.QUALITY: "fastest",
        Policy.BALANCED: "best for cost and expected latency together",
    }.get(policy, "cheapest")
    return f"{chosen.cluster} is the {measure} of {len(candidates)} candidates{facts}"

"""Model cascading: which requests try a cheaper model first, and where a shaky answer goes.

Theory. A cascade spends one cheap call on every request it covers to save an expensive
call on the ones the cheap model answers well. It pays only where answers can be held
back and looked at before the client sees them: never for a stream (its first tokens are
already the client's), never when the client named a model (it asked for that model, not
for a cheaper one), and not past the heaviest tier. Which requests cascade is the
operator's choice: by policy (`cost` by default) or by an Envoy route that opts in. Each
request carries how many models it has tried; the cascade stops at `max_attempts`
(models tried, the first included) or at the budget, whichever comes first, and then the
best answer so far is returned.

The decisions are pure: the caller passes the decision, the request's facts and the
attempt number, and gets back the tier to try next if the answer is shaky, or why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sidecar.core.decision import Decision, RoutingTable
from sidecar.core.policy import Intent, Policy
from sidecar.core.request import RequestFacts


@dataclass(frozen=True)
class CascadeRules:
    """What the operator allows a cascade to do."""

    policies: frozenset[Policy] = frozenset({Policy.COST})
    max_attempts: int = 2  # models tried for one request, the first included
    budget_s: float = 30.0  # from the first decision to the answer returned


@dataclass(frozen=True)
class EvaluatorConfig:
    """How the signals are weighed; the sidecar's `cascade:` settings map onto this.

    Like the core's settings dataclasses, it can be validated by the settings loader
    (`sidecar.config.validation.validate`): unknown keys are refused, and a ValueError
    worded "field: problem" names the key.
    """

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}

    threshold: float = 0.5
    logprob_mean_floor: float = 0.6
    logprob_mean_ceiling: float = 0.95
    logprob_min_floor: float = -9.0
    logprob_min_ceiling: float = -4.6
    refusal_max_chars: int = 600
    truncated_is_failure: bool = True
    no_signal_confidence: float = 1.0

    def __post_init__(self) -> None:
        for name in ("threshold", "no_signal_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)} is not in [0, 1]")
        if not 0.0 <= self.logprob_mean_floor < self.logprob_mean_ceiling <= 1.0:
            raise ValueError(
                "logprob_mean_floor: need 0 <= logprob_mean_floor < logprob_mean_ceiling <= 1"
            )
        if not self.logprob_min_floor < self.logprob_min_ceiling <= 0.0:
            raise ValueError("logprob_min_floor: need logprob_min_floor < logprob_min_ceiling <= 0")
        if self.refusal_max_chars < 0:
            raise ValueError(f"refusal_max_chars: {self.refusal_max_chars} is negative")


@dataclass(frozen=True)
class CascadePlan:
    """Whether a request's answer will be checked, and the tier that takes over if shaky."""

    next_tier: str | None
    why: str

    @property
    def cascades(self) -> bool:
        return self.next_tier is not None


def plan_cascade(
    decision: Decision,
    facts: RequestFacts,
    intent: Intent,
    rules: CascadeRules,
    table: RoutingTable,
    *,
    attempt: int = 1,
    route_opted_in: bool = False,
    seconds_left: float | None = None,
) -> CascadePlan:
    """The cascade plan for a decided request on its `attempt`-th model (1 = the first)."""
    if facts.stream:
        return CascadePlan(None, "no cascade: a stream is not held back")
    if intent.explicit_model is not None:
        return CascadePlan(None, "no cascade: the client named its model")
    if attempt == 1 and not (route_opted_in or intent.policy in rules.policies):
        return CascadePlan(None, f"no cascade: policy {intent.policy.value} does not cascade")
    if attempt >= rules.max_attempts:
        return CascadePlan(None, f"no cascade: attempt {attempt} of at most {rules.max_attempts}")
    if seconds_left is not None and seconds_left <= 0:
        return CascadePlan(None, "no cascade: the cascade's time budget is spent")
    tier = heavier_tier(decision.tier, table)
    if tier is None:
        return CascadePlan(None, f"no cascade: {decision.tier} is the heaviest tier")
    return CascadePlan(tier, f"cascade: a shaky answer goes on to {tier}")


def heavier_tier(tier: str, table: RoutingTable) -> str | None:
    """The next tier up from `tier` in the routing table, None for the heaviest."""
    if tier not in table.tiers:
        return None
    position = table.tiers.index(tier)
    return table.tiers[position + 1] if position + 1 < len(table.tiers) else None

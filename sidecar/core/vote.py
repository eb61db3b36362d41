"""The semantic vote: turn a prompt's nearest labelled exemplars into a route or an abstention.

Theory. Each neighbour votes for its exemplar's route with a kernel weight
`weight * exp((similarity - best) / temperature)`: a small temperature lets the closest
neighbours dominate, a large one approaches a plain weighted count. Normalising the votes
gives a probability per route (the reserved route `OUT_OF_SCOPE` included, so labelled
out-of-scope exemplars pull probability away from every real route). The winning route is
then checked twice before it is trusted: its closest exemplar must be at least the route's
similarity threshold away from the prompt, and its probability must lead the runner-up's by
at least `min_margin`. Either check failing, or the out-of-scope pseudo-route winning the
vote, makes the classifier abstain and the policy's default applies.

For two-model routing (labels such as weak/strong, optionally a neutral third label for
prompts both models serve equally) the same votes give a `need_score`,
`(1 + P(strong) - P(weak)) / 2`: 1 when every neighbour needed the strong model, 0 when
every neighbour was served better by the weak one, 0.5 when the evidence is neutral. A
`need_threshold` turns it into a choice. This module is pure: no I/O, no clocks, no
randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

OUT_OF_SCOPE = "__out_of_scope__"
"""Route name of exemplars labelled `"route": null`: prompts the router must not claim."""

SHED = "shed"
"""Abstain reason when the classifier was skipped to shed load (the model was too busy)."""

FAILED = "classifier_error"
"""Abstain reason when the classifier raised: the request is decided without it."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One exemplar returned by the index for a query, with its cosine similarity."""

    route: str
    similarity: float
    output_tokens: int | None
    weight: float = 1.0


# The settings loader validates these dataclasses with pydantic (unknown keys refused by
# `__pydantic_config__`); a ValueError from __post_init__, worded "field: problem",
# reaches the operator as a ConfigError naming the dotted key (config/validation.py).
# The core itself imports nothing but the standard library.


@dataclass(frozen=True)
class TwoModel:
    """Which labels mean the weak and the strong model, and the need score that picks strong."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}

    weak: str = "weak"
    strong: str = "strong"
    need_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.weak == self.strong:
            raise ValueError("weak and strong must be different route names")
        if not 0.0 <= self.need_threshold <= 1.0:
            raise ValueError(f"need_threshold: {self.need_threshold} is not in [0, 1]")


@dataclass(frozen=True)
class VoteConfig:
    """Knobs of the vote; the `classifier:` section of the settings file."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}

    k: int = 10
    # Defaults fit the shipped small/mid/frontier exemplars (leave-one-out, README);
    # calibrate for any other exemplar set.
    threshold: float = 0.25
    route_thresholds: Mapping[str, float] = field(default_factory=dict)
    min_margin: float = 0.0
    temperature: float = 0.1
    two_model: TwoModel | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 1000:
            raise ValueError(f"k: {self.k} is not in [1, 1000]")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: {self.threshold} is not in [-1, 1]")
        for route, value in self.route_thresholds.items():
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"route_thresholds: {route!r} = {value} is not in [-1, 1]")
        if not 0.0 <= self.min_margin <= 1.0:
            raise ValueError(f"min_margin: {self.min_margin} is not in [0, 1]")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature: {self.temperature} must be positive")

    def threshold_for(self, route: str) -> float:
        """The minimum best-neighbour similarity the route needs to be trusted."""
        return self.route_thresholds.get(route, self.threshold)


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """What the vote decided for one prompt, and the evidence for it."""

    route: str | None  # None = abstain
    scores: Mapping[str, float]  # probability per route (OUT_OF_SCOPE included), sums to 1
    confidence: float  # probability of the winning route
    best_similarity: float  # closest neighbour of the winning route
    margin: float  # winner's probability minus the runner-up's
    threshold: float  # similarity threshold that applied to the winner
    abstain_reason: str | None
    neighbours: tuple[Neighbour, ...]
    predicted_output_tokens: float | None  # vote-weighted mean of neighbours' known lengths
    need_score: float | None = None  # two-model routing only: (1 + P(strong) - P(weak)) / 2


def abstention(reason: str, threshold: float = 0.0) -> RouteVerdict:
    """A verdict without evidence that names no route, for `reason` (e.g. SHED)."""
    return RouteVerdict(
        route=None,
        scores={},
        confidence=0.0,
        best_similarity=-1.0,
        margin=0.0,
        threshold=threshold,
        abstain_reason=reason,
        neighbours=(),
        predicted_output_tokens=None,
    )


def _kernel_weights(neighbours: Sequence[Neighbour], temperature: float) -> list[float]:
    top = max(n.similarity for n in neighbours)
    # Subtracting the best similarity keeps exp() in range for any temperature.
    return [max(n.weight, 0.0) * math.exp((n.similarity - top) / temperature) for n in neighbours]


def need_from_scores(scores: Mapping[str, float], two_model: TwoModel) -> float:
    """`(1 + P(strong) - P(weak)) / 2`: how much the prompt needs the strong model."""
    gain = scores.get(two_model.strong, 0.0) - scores.get(two_model.weak, 0.0)
    return min(1.0, max(0.0, 0.5 + 0.5 * gain))


def vote(neighbours: Sequence[Neighbour], config: VoteConfig) -> RouteVerdict:
    """Similarity-weighted vote over the neighbours, abstaining when the evidence is weak."""
    if not neighbours:
        return abstention("no_neighbours", config.threshold)
    weights = _kernel_weights(neighbours, config.temperature)
    total = sum(weights)
    mass: dict[str, float] = {}
    closest: dict[str, float] = {}
    for n, w in zip(neighbours, weights, strict=True):
        mass[n.route] = mass.get(n.route, 0.0) + w
        closest[n.route] = max(closest.get(n.route, -math.inf), n.similarity)
    if total > 0.0:
        scores = {route: m / total for route, m in mass.items()}
    else:  # every weight is zero: fall back to an unweighted count
        scores = {r: sum(1 for n in neighbours if n.route == r) / len(neighbours) for r in mass}

    # Ties on probability go to the route with the closer exemplar, then to the name,
    # so the verdict never depends on the order the index returned neighbours in.
    ranked = sorted(scores, key=lambda r: (-scores[r], -closest[r], r))
    winner = ranked[0]
    runner_up = scores[ranked[1]] if len(ranked) > 1 else 0.0
    margin = scores[winner] - runner_up
    threshold = config.threshold_for(winner)

    known = [(n.output_tokens, w) for n, w in zip(neighbours, weights, strict=True)]
    known = [(t, w) for t, w in known if t is not None]
    known_weight = sum(w for _, w in known)
    predicted_tokens = (
        sum(float(t) * w for t, w in known if t is not None) / known_weight
        if known_weight > 0.0
        else None
    )

    reason: str | None = None
    if winner == OUT_OF_SCOPE:
        reason = "out_of_scope"
    elif closest[winner] < threshold:
        reason = "below_threshold"
    elif margin < config.min_margin:
        reason = "low_margin"

    route: str | None = winner if reason is None else None
    need = None
    if config.two_model is not None:
        tm = config.two_model
        need = need_from_scores(scores, tm)
        if route is not None:
            route = tm.strong if need >= tm.need_threshold else tm.weak
    return RouteVerdict(
        route=route,
        scores=scores,
        confidence=scores[winner],
        best_similarity=closest[winner],
        margin=margin,
        threshold=threshold,
        abstain_reason=reason,
        neighbours=tuple(neighbours),
        predicted_output_tokens=predicted_tokens,
        need_score=need,
    )

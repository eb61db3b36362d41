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
`need_threshold` turns it into a choice.

Linear heads. An index may also carry softmax heads trained on the exemplars: one over
static token embeddings (stage 1, microseconds) and one over the encoder's embedding
(stage 2). `head_vote` turns a head's probabilities into a verdict with the same checks:
the out-of-scope class winning, the winner's probability under a minimum
(`low_probability`), and, when neighbours are given, the winner's closest exemplar
under its similarity threshold. Stage 1 decides alone when its top probability reaches
`stage1_gate`, and decides everything while the encoder is overloaded (the verdict
says so: `overloaded`). Every verdict names the stage that made it. This module is
pure: no I/O, no clocks, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

OUT_OF_SCOPE = "__out_of_scope__"
"""Route name of exemplars labelled `"route": null`: prompts the router must not claim."""

SHED = "shed"
"""Abstain reason when the classifier was skipped to shed load (the model was too busy)."""

FAILED = "classifier_error"
"""Abstain reason when the classifier raised: the request is decided without it."""

LOW_PROBABILITY = "low_probability"
"""Abstain reason when a head's winning route is less probable than its minimum."""

STAGE_STATIC = 1
"""`RouteVerdict.stage` of a decision on static token embeddings (no model call)."""

STAGE_MODEL = 2
"""`RouteVerdict.stage` of a decision on the sentence encoder's embedding."""

Decider = Literal["knn", "head"]


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
    # Stage 2 decides by the kNN vote or by the index's linear head (kNN still supplies
    # neighbours, output lengths and the similarity check); `calibrate` picks one.
    decider: Decider = "knn"
    head_threshold: float = 0.0  # stage-2 head: minimum probability of the winner
    # Stage 1 decides alone at this top probability (None: only under overload). 0.65 is
    # what `calibrate` picks on the shipped exemplars' cross-validation (docs/EVALUATION.md).
    stage1_gate: float | None = 0.65
    stage1_threshold: float = 0.0  # stage 1: minimum probability of the winner

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
        if self.decider not in ("knn", "head"):
            raise ValueError(f"decider: {self.decider!r} is not 'knn' or 'head'")
        for name in ("head_threshold", "stage1_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)} is not in [0, 1]")
        if self.stage1_gate is not None and not 0.0 < self.stage1_gate <= 1.0:
            raise ValueError(f"stage1_gate: {self.stage1_gate} is not in (0, 1] or null")

    def threshold_for(self, route: str) -> float:
        """The minimum best-neighbour similarity the route needs to be trusted."""
        return self.route_thresholds.get(route, self.threshold)


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """What the vote decided for one prompt, and the evidence for it."""

    route: str | None  # None = abstain
    # Probability per route (OUT_OF_SCOPE included), sums to 1; a head's verdict leaves
    # out routes under 1e-4.
    scores: Mapping[str, float]
    confidence: float  # probability of the winning route
    best_similarity: float  # closest neighbour of the winning route
    margin: float  # winner's probability minus the runner-up's
    threshold: float  # similarity threshold that applied to the winner
    abstain_reason: str | None
    neighbours: tuple[Neighbour, ...]
    predicted_output_tokens: float | None  # vote-weighted mean of neighbours' known lengths
    need_score: float | None = None  # two-model routing only: (1 + P(strong) - P(weak)) / 2
    stage: int | None = None  # STAGE_STATIC or STAGE_MODEL; None: no classifier ran
    overloaded: bool = False  # decided on stage 1 because the encoder was over its budget


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


def _weighted_tokens(neighbours: Sequence[Neighbour], weights: Sequence[float]) -> float | None:
    """Vote-weighted mean of the neighbours' known output lengths (None if none is known)."""
    known = [(n.output_tokens, w) for n, w in zip(neighbours, weights, strict=True)]
    known = [(t, w) for t, w in known if t is not None]
    known_weight = sum(w for _, w in known)
    if known_weight <= 0.0:
        return None
    return sum(float(t) * w for t, w in known if t is not None) / known_weight


def need_from_scores(scores: Mapping[str, float], two_model: TwoModel) -> float:
    """`(1 + P(strong) - P(weak)) / 2`: how much the prompt needs the strong model."""
    gain = scores.get(two_model.strong, 0.0) - scores.get(two_model.weak, 0.0)
    return min(1.0, max(0.0, 0.5 + 0.5 * gain))


def vote(
    neighbours: Sequence[Neighbour], config: VoteConfig, *, stage: int = STAGE_MODEL
) -> RouteVerdict:
    """Similarity-weighted vote over the neighbours, abstaining when the evidence is weak."""
    if not neighbours:
        return replace(abstention("no_neighbours", config.threshold), stage=stage)
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

    return _verdict(
        winner,
        scores,
        closest=closest[winner],
        threshold=threshold,
        margin=margin,
        min_probability=0.0,
        neighbours=neighbours,
        predicted=_weighted_tokens(neighbours, weights),
        config=config,
        stage=stage,
    )


def head_vote(
    probabilities: Mapping[str, float],
    neighbours: Sequence[Neighbour],
    config: VoteConfig,
    *,
    stage: int,
    min_probability: float,
    output_tokens: float | None = None,
    overloaded: bool = False,
) -> RouteVerdict:
    """A linear head's probabilities as a verdict, with the vote's checks.

    With neighbours (stage 2) the winner's closest exemplar among them must reach the
    route's similarity threshold (-1 when none of them is the winner's) and the
    neighbours predict the output length; without (stage 1) there is no similarity check
    and `output_tokens` (the route's mean) is the prediction.
    """
    if not probabilities:
        return replace(abstention("no_scores"), stage=stage, overloaded=overloaded)
    ranked = sorted(probabilities, key=lambda r: (-probabilities[r], r))
    winner = ranked[0]
    confidence = probabilities[winner]
    margin = confidence - (probabilities[ranked[1]] if len(ranked) > 1 else 0.0)
    if neighbours:
        closest = max((n.similarity for n in neighbours if n.route == winner), default=-1.0)
        threshold = config.threshold_for(winner)
        predicted = _weighted_tokens(neighbours, _kernel_weights(neighbours, config.temperature))
    else:
        closest, threshold, predicted = -1.0, -1.0, output_tokens

    return _verdict(
        winner,
        probabilities,
        closest=closest,
        threshold=threshold,
        margin=margin,
        min_probability=min_probability,
        neighbours=neighbours,
        predicted=predicted,
        config=config,
        stage=stage,
        overloaded=overloaded,
    )


def _verdict(
    winner: str,
    scores: Mapping[str, float],
    *,
    closest: float,
    threshold: float,
    margin: float,
    min_probability: float,
    neighbours: Sequence[Neighbour],
    predicted: float | None,
    config: VoteConfig,
    stage: int,
    overloaded: bool = False,
) -> RouteVerdict:
    """The checks every winner must pass, the two-model mapping, and the verdict."""
    confidence = scores[winner]
    reason: str | None = None
    if winner == OUT_OF_SCOPE:
        reason = "out_of_scope"
    elif confidence < min_probability:
        reason = LOW_PROBABILITY
    elif closest < threshold:
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
        confidence=confidence,
        best_similarity=closest,
        margin=margin,
        threshold=threshold,
        abstain_reason=reason,
        neighbours=tuple(neighbours),
        predicted_output_tokens=predicted,
        need_score=need,
        stage=stage,
        overloaded=overloaded,
    )

"""Choosing the vote's shape, k and temperature, by leave-one-out on the exemplars.

Theory. The vote has two knobs that are not thresholds: how many neighbours it hears
(`k`) and how sharply it prefers the closest of them (`temperature`). No default suits
every exemplar set. Intent data with a hundred near-paraphrases per route wants the
few closest neighbours to decide; outcome data such as GSM8K, where two prompts that
look alike can need different models, wants a wider, flatter vote that averages the
noise. So `calibrate` tries a small grid of both and keeps the pair that scores best,
and it scores each pair only on the exemplars themselves: each exemplar is classified
by all the *others* (leave-one-out), never on a test set.

One neighbour search serves the whole grid: the exemplars' `max(k)` nearest others are
found once, and a smaller k is a prefix of that list. What "scores best" means depends
on the data:

- route data (intents, out-of-scope prompts labelled null): the in-scope accuracy the
  similarity thresholds can keep at the out-of-scope recall target, the number the
  operator asked for (`choose_thresholds`);
- two-model data (labels weak/strong/tie from outcomes): APGR of the need score over
  the exemplars, with each label standing for its outcome (strong: only the strong
  model right, weak: only the weak one, tie: both the same; APGR does not depend on
  which "same"). The score ranks prompts; the need threshold is chosen afterwards.

Ties between pairs go to the one nearer the defaults (listed first), so a grid that
cannot tell them apart leaves the settings as they were. This module reads no files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.core.vote import OUT_OF_SCOPE, Neighbour, RouteVerdict, VoteConfig, vote
from sidecar.errors import ConfigError
from sidecar.evaluation.calibration import calibration_point, choose_thresholds, thresholds_off
from sidecar.evaluation.metrics import apgr, routing_curve
from sidecar.semantic.index import ExemplarIndex

K_GRID = (10, 5, 20, 50, 100)
TEMPERATURE_GRID = (0.1, 0.05, 0.2, 0.3, 0.5, 1.0)

Objective = Callable[[Sequence[RouteVerdict], Sequence[str]], float]


@dataclass(frozen=True)
class ShapeScore:
    """One (k, temperature) pair and its leave-one-out score."""

    k: int
    temperature: float
    score: float


@dataclass(frozen=True)
class ShapeChoice:
    """The pair chosen, the score of the configured pair, and every pair tried."""

    best: ShapeScore
    configured: ShapeScore
    tried: tuple[ShapeScore, ...]
    objective: str


def accuracy_at_recall(target_recall: float, confidence: float) -> Objective:
    """Route data: in-scope accuracy at the out-of-scope recall target."""

    def score(verdicts: Sequence[RouteVerdict], labels: Sequence[str]) -> float:
        points = [
            calibration_point(v, None if label == OUT_OF_SCOPE else label)
            for v, label in zip(verdicts, labels, strict=True)
        ]
        return choose_thresholds(
            points, target_recall=target_recall, confidence=confidence
        ).accuracy

    return score


def in_scope_accuracy(verdicts: Sequence[RouteVerdict], labels: Sequence[str]) -> float:
    """Route data without out-of-scope exemplars: top-1 accuracy, nothing abstaining."""
    pairs = [(v.route, label) for v, label in zip(verdicts, labels, strict=True)]
    return sum(route == label for route, label in pairs) / len(pairs)


def need_apgr(weak: str, strong: str) -> Objective:
    """Two-model data: APGR of the need score, labels standing for outcomes."""

    def score(verdicts: Sequence[RouteVerdict], labels: Sequence[str]) -> float:
        needs = [0.5 if v.need_score is None else v.need_score for v in verdicts]
        weak_right = [1.0 if label != strong else 0.0 for label in labels]
        strong_right = [1.0 if label != weak else 0.0 for label in labels]
        return apgr(routing_curve(needs, weak_right, strong_right))

    return score


def score_shapes(
    neighbours: Sequence[Sequence[Neighbour]],
    labels: Sequence[str],
    config: VoteConfig,
    objective: Objective,
    *,
    ks: Sequence[int] = K_GRID,
    temperatures: Sequence[float] = TEMPERATURE_GRID,
) -> list[ShapeScore]:
    """Every pair's score; `neighbours` are each exemplar's nearest others, best first."""
    loose = thresholds_off(config)
    scores = []
    for k in ks:
        heard = [found[:k] for found in neighbours]
        for temperature in temperatures:
            shaped = dataclasses.replace(loose, k=k, temperature=temperature)
            verdicts = [vote(found, shaped) for found in heard]
            scores.append(ShapeScore(k, temperature, objective(verdicts, labels)))
    return scores


def choose_vote_shape(
    index: ExemplarIndex,
    config: VoteConfig,
    objective: Objective,
    *,
    objective_name: str,
    ks: Sequence[int] = K_GRID,
    temperatures: Sequence[float] = TEMPERATURE_GRID,
) -> ShapeChoice:
    """The best (k, temperature) on the index's own exemplars, left out one at a time."""
    if len(index) < 2:
        raise ConfigError("choosing k and temperature needs at least two exemplars")
    ks = tuple(k for k in dict.fromkeys((config.k, *ks)) if k < len(index)) or (len(index) - 1,)
    temperatures = tuple(dict.fromkeys((config.temperature, *temperatures)))
    neighbours = index.self_neighbours(max(ks))
    tried = score_shapes(
        neighbours, index.routes, config, objective, ks=ks, temperatures=temperatures
    )
    best = max(tried, key=lambda s: s.score)  # first of equals: the configured pair
    configured = next(
        (s for s in tried if (s.k, s.temperature) == (config.k, config.temperature)), tried[0]
    )
    return ShapeChoice(
        best=best, configured=configured, tried=tuple(tried), objective=objective_name
    )

"""Choosing the classifier's thresholds on a calibration set, never on the test set.

Two targets are supported.

*Out-of-scope recall.* Maximise in-scope accuracy subject to "at least R of the
out-of-scope prompts are abstained on". Raising a threshold only ever trades accepted
in-scope prompts for caught out-of-scope ones, so for one global threshold the answer is
the lowest threshold meeting the recall target. Per-route thresholds then move each
route's threshold by at most `max_route_offset` around the global one, chosen by a
Lagrangian sweep: for a price lambda per accepted out-of-scope prompt each route
independently picks the offset maximising (correct in-scope accepted) - lambda x
(out-of-scope accepted); the best sweep point meeting the target wins. The bound on the
offset is what stops 150 routes from over-fitting to a hundred out-of-scope examples.

A calibration set is small, so its recall is an estimate. With `confidence` c the target
is applied to the one-sided Wilson lower bound of the recall instead of to the observed
value: "R with confidence c", not "R on these particular prompts".

*Share of strong calls.* For two-model routing, the need threshold is the need-score
quantile that sends the requested share of calibration prompts to the strong model.

The default calibration set is leave-one-out over the index's own exemplars (each
exemplar classified by the others), so the whole exemplar set calibrates without being
held out of the index; `--calibration FILE` uses explicit rows instead.

*Stages.* When the index has linear heads, their cross-validated (out-of-fold)
probabilities on the exemplars join the leave-one-out neighbours, and `choose_stages`
also picks, for the same recall target:
- the stage-2 decider: the kNN vote, or the head with a minimum probability
  (`head_threshold`, swept on a grid) beside the similarity thresholds, whichever is
  more accurate;
- `stage1_threshold`, the minimum stage-1 probability that still routes when stage 1
  decides alone (under overload): the lowest meeting the recall target on stage 1 alone;
- `stage1_gate`, the lowest top probability at which stage 1 may decide without the
  encoder such that the two stages together lose at most `max_stage1_loss` of in-scope
  accuracy against stage 2 alone *and against every other gate*, and still meet the
  recall target. A lower gate sends more prompts to the cheap stage; the loss bound says
  how much accuracy that may cost. (Against stage 2 alone only, the shipped tiers, where
  stage 1 is the more accurate stage, would get gate 0.5 at 0.887 accuracy where 0.65
  gives 0.902: stage 2 is still better on stage 1's least sure prompts.)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from sidecar.config.files import read_yaml_mapping, write_text_atomically
from sidecar.config.validation import validate
from sidecar.core.vote import (
    OUT_OF_SCOPE,
    STAGE_MODEL,
    STAGE_STATIC,
    Decider,
    RouteVerdict,
    VoteConfig,
    head_vote,
    vote,
)
from sidecar.errors import ConfigError
from sidecar.semantic.index import ExemplarIndex
from sidecar.semantic.stages import decided_by_stage1, stage1_from_probabilities

_GRID = 1e-4  # thresholds are written with 4 decimals
HEAD_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0 .. 0.95
GATES = (*(round(0.5 + 0.05 * i, 2) for i in range(10)), 0.96, 0.97, 0.98, 0.99, 1.0)


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One calibration prompt: the vote's winner (None: abstains at any threshold), gold, sim."""

    winner: str | None
    gold: str | None
    similarity: float


@dataclass(frozen=True)
class ThresholdChoice:
    """Thresholds chosen for an out-of-scope recall target and what they achieve."""

    threshold: float
    route_thresholds: Mapping[str, float]
    accuracy: float
    oos_recall: float
    required_recall: float
    n_in_scope: int
    n_out_of_scope: int


def calibration_point(verdict: RouteVerdict, gold: str | None) -> CalibrationPoint:
    """Reduce a verdict made with thresholds off (-1) to what threshold choice needs."""
    # With thresholds off, a verdict only abstains for reasons no threshold can change.
    return CalibrationPoint(winner=verdict.route, gold=gold, similarity=verdict.best_similarity)


def required_recall(target: float, n_oos: int, confidence: float) -> float:
    """Smallest observed recall whose one-sided Wilson lower bound reaches `target`."""
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"target out-of-scope recall must be in [0, 1], got {target}")
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"confidence must be in [0.5, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(confidence)
    for caught in range(n_oos + 1):
        p = caught / n_oos
        centre = p + z * z / (2 * n_oos)
        spread = z * math.sqrt(p * (1 - p) / n_oos + z * z / (4 * n_oos * n_oos))
        if (centre - spread) / (1 + z * z / n_oos) >= target - 1e-12:
            return p
    return 1.0


def _above(value: float) -> float:
    """The smallest grid threshold that rejects `value` (abstain when similarity < threshold)."""
    return min(1.0, math.floor(value / _GRID + 1e-9) * _GRID + _GRID)


def choose_thresholds(
    points: Sequence[CalibrationPoint],
    *,
    target_recall: float,
    confidence: float = 0.95,
    max_route_offset: float = 0.0,
    offset_steps: int = 11,
) -> ThresholdChoice:
    """Global (and optionally per-route) thresholds maximising accuracy at the recall target."""
    oos = [p for p in points if p.gold is None]
    in_scope = [p for p in points if p.gold is not None]
    if not in_scope:
        raise ConfigError("calibration needs in-scope prompts")
    if not oos:
        # Nothing to catch (e.g. the shipped tiers): a threshold could only turn right
        # answers into abstentions, so every threshold stays off and the target is vacuous.
        hits = sum(1 for p in in_scope if p.winner is not None and p.winner == p.gold)
        return ThresholdChoice(
            threshold=-1.0,
            route_thresholds={},
            accuracy=hits / len(in_scope),
            oos_recall=1.0,
            required_recall=0.0,
            n_in_scope=len(in_scope),
            n_out_of_scope=0,
        )
    required = required_recall(target_recall, len(oos), confidence)
    must_catch = math.ceil(required * len(oos) - 1e-9)
    free = sum(1 for p in oos if p.winner is None)
    claimed = sorted(p.similarity for p in oos if p.winner is not None)
    still = must_catch - free
    if still <= 0:
        base = -1.0
    elif still > len(claimed):
        raise ConfigError("no threshold reaches the out-of-scope recall target")
    else:
        base = _above(claimed[still - 1])

    routes = sorted({p.winner for p in points if p.winner is not None})
    correct = {
        r: np.array([p.similarity for p in in_scope if p.winner == r == p.gold]) for r in routes
    }
    wrong_oos = {r: np.array([p.similarity for p in oos if p.winner == r]) for r in routes}

    def evaluate(thresholds: Mapping[str, float]) -> tuple[float, float]:
        hits = sum(int(np.sum(correct[r] >= thresholds[r])) for r in routes)
        leaks = sum(int(np.sum(wrong_oos[r] >= thresholds[r])) for r in routes)
        return hits / len(in_scope), (len(oos) - leaks) / len(oos)

    best = {r: base for r in routes}
    best_accuracy, best_recall = evaluate(best)
    if max_route_offset > 0 and offset_steps >= 2:
        offsets = np.linspace(-max_route_offset, max_route_offset, offset_steps)
        candidates = {
            r: [max(-1.0, min(1.0, round(base + float(d), 4))) for d in offsets] for r in routes
        }
        for price in [0.0, *np.geomspace(0.01, 1000.0, 60)]:
            pick = {}
            for r in routes:
                values = [
                    int(np.sum(correct[r] >= t)) - price * int(np.sum(wrong_oos[r] >= t))
                    for t in candidates[r]
                ]
                top = max(values)
                pick[r] = min(
                    (t for t, v in zip(candidates[r], values, strict=True) if v == top),
                    key=lambda t: abs(t - base),
                )
            accuracy, recall = evaluate(pick)
            if recall >= required - 1e-12 and accuracy > best_accuracy:
                best, best_accuracy, best_recall = pick, accuracy, recall
    return ThresholdChoice(
        threshold=base,
        route_thresholds={r: t for r, t in best.items() if t != base},
        accuracy=best_accuracy,
        oos_recall=best_recall,
        required_recall=required,
        n_in_scope=len(in_scope),
        n_out_of_scope=len(oos),
    )


def choose_need_threshold(need_scores: Sequence[float], target_share: float) -> tuple[float, float]:
    """(threshold, achieved share): need >= threshold goes strong; ties may overshoot."""
    if not need_scores:
        raise ConfigError("no calibration prompts to choose a need threshold on")
    if not 0.0 <= target_share <= 1.0:
        raise ConfigError(f"target strong share must be in [0, 1], got {target_share}")
    values = np.sort(np.asarray(need_scores, dtype=np.float64))[::-1]
    n = len(values)
    best_threshold, best_share = 1.0, float(np.mean(values >= 1.0))
    for candidate in np.unique(values):
        share = float(np.sum(values >= candidate)) / n
        if abs(share - target_share) < abs(best_share - target_share):
            best_threshold, best_share = float(candidate), share
    return best_threshold, best_share


def thresholds_off(config: VoteConfig) -> VoteConfig:
    """The same vote with every threshold disabled (similarity -1, probabilities 0)."""
    return dataclasses.replace(
        config,
        threshold=-1.0,
        route_thresholds={},
        head_threshold=0.0,
        stage1_threshold=0.0,
        stage1_gate=None,
    )


def leave_one_out(index: ExemplarIndex, config: VoteConfig) -> list[RouteVerdict]:
    """Each exemplar classified by all the others, with thresholds off."""
    loose = thresholds_off(config)
    return [vote(found, loose) for found in index.self_neighbours(config.k)]


@dataclass(frozen=True, slots=True)
class StagedPoint:
    """One calibration prompt: its gold route and each stage's verdict with thresholds off."""

    gold: str | None
    knn: RouteVerdict
    head: RouteVerdict | None = None
    stage1: RouteVerdict | None = None


@dataclass(frozen=True)
class StagesChoice:
    """The decider, thresholds and stage-1 settings chosen, and what they achieve."""

    decider: Decider
    head_threshold: float
    thresholds: ThresholdChoice  # similarity thresholds of the chosen decider
    knn_accuracy: float
    head_accuracy: float | None  # None: no head, or it cannot reach the target
    stage1_threshold: float | None  # None: no stage-1 head
    stage1_alone: tuple[float, float] | None  # (accuracy, recall) of stage 1 deciding alone
    stage1_gate: float | None
    stage1_share: float  # calibration prompts decided by stage 1 at the gate
    accuracy: float  # the two stages together
    oos_recall: float

    def settings(self) -> dict[str, object]:
        """The `classifier:` keys this choice sets."""
        values: dict[str, object] = {
            "threshold": self.thresholds.threshold,
            "route_thresholds": dict(sorted(self.thresholds.route_thresholds.items())),
            "decider": self.decider,
            "head_threshold": self.head_threshold,
        }
        if self.stage1_threshold is not None:
            values["stage1_threshold"] = self.stage1_threshold
            values["stage1_gate"] = self.stage1_gate
        return values


def staged_leave_one_out(index: ExemplarIndex, config: VoteConfig) -> list[StagedPoint]:
    """Leave-one-out neighbours plus the heads' out-of-fold probabilities, per exemplar.

    The index must be loaded with its evidence (`ExemplarIndex.load(..., evidence=True)`,
    or built in memory) for the heads to take part.
    """
    loose = thresholds_off(config)
    heads = index.heads
    oof2 = None if heads is None else heads.stage2_out_of_fold
    oof1 = None if heads is None else heads.stage1_out_of_fold
    points = []
    for i, found in enumerate(index.self_neighbours(config.k)):
        route = index.routes[i]
        head = stage1 = None
        if heads is not None and oof2 is not None:
            head = head_vote(
                heads.scores(oof2[i]), found, loose, stage=STAGE_MODEL, min_probability=0.0
            )
        if heads is not None and oof1 is not None:
            stage1 = stage1_from_probabilities(heads, oof1[i], loose)
        points.append(
            StagedPoint(
                gold=None if route == OUT_OF_SCOPE else route,
                knn=vote(found, loose),
                head=head,
                stage1=stage1,
            )
        )
    return points


def choose_stages(
    points: Sequence[StagedPoint],
    config: VoteConfig,
    *,
    target_recall: float,
    confidence: float = 0.95,
    max_route_offset: float = 0.0,
    decider: Decider | None = None,
    gate: float | str | None = "auto",
    max_stage1_loss: float = 0.0,
) -> StagesChoice:
    """Decider, thresholds and stage-1 gate for an out-of-scope recall target (see above).

    `decider` None picks the more accurate; `gate` "auto" picks the lowest allowed, None
    switches stage 1's gate off, a number is taken as given.
    """

    def thresholds(calibration: list[CalibrationPoint]) -> ThresholdChoice:
        return choose_thresholds(
            calibration,
            target_recall=target_recall,
            confidence=confidence,
            max_route_offset=max_route_offset,
        )

    golds = [p.gold for p in points]
    knn = thresholds([calibration_point(p.knn, p.gold) for p in points])
    best_head: tuple[float, ThresholdChoice] | None = None
    heads = [p.head for p in points]
    if all(h is not None for h in heads) and decider != "knn":
        for tau in HEAD_THRESHOLDS:
            calibration = [
                CalibrationPoint(
                    winner=None if h.confidence < tau else h.route,
                    gold=gold,
                    similarity=h.best_similarity,
                )
                for h, gold in zip(heads, golds, strict=True)
                if h is not None
            ]
            try:
                choice = thresholds(calibration)
            except ConfigError:  # this minimum probability cannot reach the target
                continue
            if best_head is None or choice.accuracy > best_head[1].accuracy + 1e-12:
                best_head = (tau, choice)
    if decider == "head" and best_head is None:
        raise ConfigError("the index has no head evidence, or the head cannot reach the target")
    use_head = best_head is not None and (
        decider == "head" or best_head[1].accuracy > knn.accuracy + 1e-12
    )
    head_threshold, chosen = best_head if use_head and best_head is not None else (0.0, knn)
    stage2 = dataclasses.replace(
        thresholds_off(config),
        decider="head" if use_head else "knn",
        head_threshold=head_threshold,
        threshold=chosen.threshold,
        route_thresholds=chosen.route_thresholds,
    )
    right2 = np.array([_stage2_again(p, stage2).route == p.gold for p in points])
    oos = np.array([g is None for g in golds])
    required = chosen.required_recall

    first = [p.stage1 for p in points]
    stage1_threshold = stage1_alone = None
    gate_value: float | None = None
    right = right2
    share = 0.0
    if all(v is not None for v in first):
        by_probability = [
            CalibrationPoint(winner=v.route, gold=gold, similarity=v.confidence)
            for v, gold in zip(first, golds, strict=True)
            if v is not None
        ]
        try:
            alone = choose_thresholds(
                by_probability, target_recall=target_recall, confidence=confidence
            )
            stage1_threshold = round(max(0.0, alone.threshold), 4)
            stage1_alone = (alone.accuracy, alone.oos_recall)
        except ConfigError:  # stage 1 alone cannot reach the target: abstain on everything
            stage1_threshold = 1.0
        confidence1 = np.array([v.confidence for v in first if v is not None])
        right1 = np.array(
            [
                (v.route if v.confidence >= stage1_threshold else None) == gold
                for v, gold in zip(first, golds, strict=True)
                if v is not None
            ]
        )
        # Stage 1 is never final under its own threshold, so no gate below it means anything.
        lowest = [stage1_threshold] if GATES[0] < stage1_threshold < GATES[-1] else []
        allowed = (*lowest, *(g for g in GATES if g >= stage1_threshold))
        candidates = () if gate is None else allowed if gate == "auto" else (float(gate),)
        outcomes = []
        for g in candidates:
            # As in the sidecar: stage 1 is final only when it is also above its threshold.
            use1 = (confidence1 >= g) & (confidence1 >= stage1_threshold)
            together = np.where(use1, right1, right2)
            accuracy, recall = float(together[~oos].mean()), _share(together[oos])
            outcomes.append((g, together, float(use1.mean()), accuracy, recall))
        # The bar is the best of stage 2 alone and every gate meeting the recall target:
        # where stage 1 beats the encoder on its surest prompts, a lower gate would give
        # back accuracy that a higher one keeps.
        bar = max(
            [float(right2[~oos].mean())]
            + [a for _, _, _, a, r in outcomes if r >= required - 1e-12]
        )
        for g, together, used, accuracy, recall in outcomes:
            if gate != "auto" or (
                accuracy >= bar - max_stage1_loss - 1e-12 and recall >= required - 1e-12
            ):
                gate_value, right, share = g, together, used
                break
    return StagesChoice(
        decider="head" if use_head else "knn",
        head_threshold=head_threshold,
        thresholds=chosen,
        knn_accuracy=knn.accuracy,
        head_accuracy=None if best_head is None else best_head[1].accuracy,
        stage1_threshold=stage1_threshold,
        stage1_alone=stage1_alone,
        stage1_gate=gate_value,
        stage1_share=share,
        accuracy=float(right[~oos].mean()),
        oos_recall=_share(right[oos]),
    )


def _share(caught: npt.NDArray[np.bool_]) -> float:
    """Share of True values; 1.0 when there are none to catch (a vacuous recall)."""
    return float(caught.mean()) if len(caught) else 1.0


def _stage2_again(point: StagedPoint, config: VoteConfig) -> RouteVerdict:
    """The point's stage-2 verdict re-decided with `config` (its thresholds on)."""
    if config.decider == "head" and point.head is not None:
        return head_vote(
            point.head.scores,
            point.head.neighbours,
            config,
            stage=STAGE_MODEL,
            min_probability=config.head_threshold,
        )
    return vote(point.knn.neighbours, config)


@dataclass(frozen=True)
class StagesScore:
    """What one classifier setting does on staged calibration points, deciding as the sidecar."""

    stage1_share: float  # prompts stage 1 decided without the encoder
    stage1_accuracy: float | None  # right answers among them (None: it decided none)
    accuracy: float  # in-scope accuracy of the two stages together
    stage2_accuracy: float  # in-scope accuracy of stage 2 alone
    oos_recall: float  # 1.0 when there are no out-of-scope prompts


def score_stages(points: Sequence[StagedPoint], config: VoteConfig) -> StagesScore:
    """Decide every point with `config` (gate, thresholds, decider) and score the result."""
    if not any(p.gold is not None for p in points):
        raise ConfigError("scoring the stages needs in-scope prompts")
    right1, right2, used = [], [], []
    for point in points:
        second = _stage2_again(point, config)
        first = None
        if point.stage1 is not None:
            first = head_vote(
                point.stage1.scores,
                (),
                config,
                stage=STAGE_STATIC,
                min_probability=config.stage1_threshold,
            )
        used.append(first is not None and decided_by_stage1(first, config))
        right1.append(first is not None and first.route == point.gold)
        right2.append(second.route == point.gold)
    use1, oos = np.array(used), np.array([p.gold is None for p in points])
    together = np.where(use1, np.array(right1), np.array(right2))
    return StagesScore(
        stage1_share=float(use1.mean()),
        stage1_accuracy=float(np.array(right1)[use1].mean()) if use1.any() else None,
        accuracy=float(together[~oos].mean()),
        stage2_accuracy=float(np.array(right2)[~oos].mean()),
        oos_recall=_share(together[oos]),
    )


def write_classifier_settings(path: Path, updates: Mapping[str, object]) -> None:
    """Merge `updates` into the file's `classifier:` section, keeping every other key."""
    data: dict[str, object] = {}
    if path.exists():
        data = read_yaml_mapping(path, "settings", empty_ok=True)
    section = data.get("classifier") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: classifier: must be a mapping")
    merged = {**section, **updates}
    validate(VoteConfig, merged, str(path), section="classifier")
    data["classifier"] = merged
    write_text_atomically(path, yaml.safe_dump(data, sort_keys=False))

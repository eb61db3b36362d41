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
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sidecar.config.files import read_yaml_mapping, write_text_atomically
from sidecar.config.validation import validate
from sidecar.core.vote import RouteVerdict, VoteConfig, vote
from sidecar.errors import ConfigError
from sidecar.semantic.index import ExemplarIndex

_GRID = 1e-4  # thresholds are written with 4 decimals


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
    if not oos or not in_scope:
        raise ConfigError("calibration needs both in-scope and out-of-scope prompts")
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
    """The same vote with every similarity threshold disabled (-1)."""
    return dataclasses.replace(config, threshold=-1.0, route_thresholds={})


def leave_one_out(index: ExemplarIndex, config: VoteConfig) -> list[RouteVerdict]:
    """Each exemplar classified by all the others, with thresholds off."""
    loose = thresholds_off(config)
    return [vote(found, loose) for found in index.self_neighbours(config.k)]


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

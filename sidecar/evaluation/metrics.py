"""How good is a router: classification metrics and RouteLLM's two-model cost/quality curve.

Classification (route rows): in-scope accuracy counts an abstention as a miss; macro-F1
averages per-route F1 over every route seen in gold or predictions; out-of-scope
precision/recall treat "abstained" as the positive class.

Two-model routing (outcome rows), as RouteLLM defines it: rank prompts by the router's
score (most in need of the strong model first) and send the top x% to the strong model,
the rest to the weak one, for every x from 0 to 100%. The quality of the mix traces a
curve from the weak model's quality to the strong model's. PGR(x) = (quality(x) - weak)
/ (strong - weak); APGR is the area under PGR over x in [0, 1] (trapezoids); CPT(p) is the
smallest share of strong calls at which PGR reaches p. Prompts with equal scores are one
block whose internal order is unknown, so the curve is linear across a block, which is
the expectation over random orders; a router giving every prompt the same score is
therefore the straight line from weak to strong, APGR exactly 0.5 (the random router).
docs/EVALUATION.md compares this with RouteLLM's evaluate.py, which samples the curve at
score deciles instead of at every prompt.

The metric functions are pure; only write_curve_csv and plot_curve write files. The
`inference-router eval` command that feeds them is `sidecar.cli.evaluate`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.errors import ConfigError, OutputError


@dataclass(frozen=True)
class ClassificationMetrics:
    """Route accuracy and abstention quality; None where a metric has no rows to stand on."""

    n_in_scope: int
    n_out_of_scope: int
    accuracy: float | None
    macro_f1: float | None
    in_scope_abstain_rate: float | None
    oos_precision: float | None
    oos_recall: float | None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def classification_metrics(
    gold: Sequence[str | None], predicted: Sequence[str | None]
) -> ClassificationMetrics:
    """Metrics for gold routes vs predicted routes; None on either side means out of scope."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted must have the same length")
    pairs = list(zip(gold, predicted, strict=True))
    in_scope = [(g, p) for g, p in pairs if g is not None]
    oos = [(g, p) for g, p in pairs if g is None]
    routes = sorted({g for g, _ in in_scope} | {p for _, p in pairs if p is not None})
    f1s = []
    for route in routes:
        tp = sum(1 for g, p in pairs if g == route and p == route)
        fp = sum(1 for g, p in pairs if g != route and p == route)
        fn = sum(1 for g, p in pairs if g == route and p != route)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    abstained = [(g, p) for g, p in pairs if p is None]
    return ClassificationMetrics(
        n_in_scope=len(in_scope),
        n_out_of_scope=len(oos),
        accuracy=_ratio(sum(1 for g, p in in_scope if g == p), len(in_scope)),
        macro_f1=sum(f1s) / len(f1s) if f1s else None,
        in_scope_abstain_rate=_ratio(sum(1 for _, p in in_scope if p is None), len(in_scope)),
        oos_precision=_ratio(sum(1 for g, _ in abstained if g is None), len(abstained)),
        oos_recall=_ratio(sum(1 for _, p in oos if p is None), len(oos)),
    )


@dataclass(frozen=True)
class RoutingCurve:
    """Quality of the weak/strong mix at each share of strong calls (block boundaries)."""

    strong_share: tuple[float, ...]
    performance: tuple[float, ...]
    weak_performance: float
    strong_performance: float

    @property
    def pgr(self) -> tuple[float, ...]:
        """Performance gap recovered at each point."""
        gap = self.strong_performance - self.weak_performance
        if gap == 0:
            raise ConfigError(
                "the weak and strong models perform equally on these rows: PGR is undefined"
            )
        return tuple((p - self.weak_performance) / gap for p in self.performance)


def routing_curve(
    scores: Sequence[float], weak_quality: Sequence[float], strong_quality: Sequence[float]
) -> RoutingCurve:
    """Sweep the share of strong calls by sending the highest-scored prompts to strong first."""
    n = len(scores)
    if not n or len(weak_quality) != n or len(strong_quality) != n:
        raise ConfigError("two-model metrics need at least one outcome row")
    score = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak_quality, dtype=np.float64)
    gain = np.asarray(strong_quality, dtype=np.float64) - weak
    order = np.argsort(-score, kind="stable")
    sorted_scores, sorted_gain = score[order], gain[order]
    # A point only at the end of each block of equal scores: see the module docstring.
    ends = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    ends = np.append(ends, n)
    cumulative = np.concatenate([[0.0], np.cumsum(sorted_gain)])
    base = float(weak.sum())
    share = [0.0] + [float(e) / n for e in ends]
    perf = [base / n] + [(base + float(cumulative[e])) / n for e in ends]
    return RoutingCurve(
        strong_share=tuple(share),
        performance=tuple(perf),
        weak_performance=float(weak.mean()),
        strong_performance=float(np.mean(strong_quality)),
    )


def apgr(curve: RoutingCurve) -> float:
    """Average performance gap recovered: the area under PGR over the strong-call share."""
    x, y = np.asarray(curve.strong_share), np.asarray(curve.pgr)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(curve: RoutingCurve, target_pgr: float) -> float | None:
    """Smallest share of strong calls at which PGR reaches `target_pgr`; None if it never does."""
    x, y = curve.strong_share, curve.pgr
    if y[0] >= target_pgr:
        return x[0]
    for i in range(1, len(x)):
        if y[i] >= target_pgr:
            fraction = (target_pgr - y[i - 1]) / (y[i] - y[i - 1])
            return x[i - 1] + fraction * (x[i] - x[i - 1])
    return None


@dataclass(frozen=True)
class TwoModelMetrics:
    """RouteLLM's summary of a weak/strong router on outcome rows."""

    n: int
    weak_performance: float
    strong_performance: float
    apgr: float
    cpt50: float | None
    cpt80: float | None
    oracle_apgr: float
    random_apgr: float = 0.5


def two_model_metrics(
    scores: Sequence[float], weak_quality: Sequence[float], strong_quality: Sequence[float]
) -> tuple[TwoModelMetrics, RoutingCurve]:
    """APGR, CPT(50%), CPT(80%) and the oracle's APGR, plus the curve itself."""
    curve = routing_curve(scores, weak_quality, strong_quality)
    gains = [s - w for w, s in zip(weak_quality, strong_quality, strict=True)]
    oracle = routing_curve(gains, weak_quality, strong_quality)
    metrics = TwoModelMetrics(
        n=len(scores),
        weak_performance=curve.weak_performance,
        strong_performance=curve.strong_performance,
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        oracle_apgr=apgr(oracle),
    )
    return metrics, curve


@dataclass(frozen=True)
class OperatingPoint:
    """What one need threshold does on the test rows."""

    need_threshold: float
    strong_share: float
    performance: float


def operating_point(
    scores: Sequence[float],
    weak_quality: Sequence[float],
    strong_quality: Sequence[float],
    need_threshold: float,
) -> OperatingPoint:
    """Share of strong calls and mixed quality when prompts with score >= threshold go strong."""
    picks = [s >= need_threshold for s in scores]
    chosen = [
        sq if pick else wq for pick, wq, sq in zip(picks, weak_quality, strong_quality, strict=True)
    ]
    return OperatingPoint(
        need_threshold=need_threshold,
        strong_share=sum(picks) / len(picks),
        performance=sum(chosen) / len(chosen),
    )


def write_curve_csv(curve: RoutingCurve, path: Path) -> None:
    """One row per curve point: strong_share, performance, pgr."""
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["strong_share", "performance", "pgr"])
            for x, p, g in zip(curve.strong_share, curve.performance, curve.pgr, strict=True):
                writer.writerow([f"{x:.6f}", f"{p:.6f}", f"{g:.6f}"])
    except OSError as exc:
        raise OutputError(f"{path}: cannot write curve CSV: {exc.strerror or exc}") from exc


def plot_curve(curve: RoutingCurve, path: Path, *, title: str, weak: str, strong: str) -> None:
    """Draw the curve with the weak/strong levels and the random router's diagonal as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed "
            "(pip install matplotlib, or the project's dev extra)"
        ) from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [100 * x for x in curve.strong_share]
    ax.plot(xs, curve.performance, label="router", color="tab:blue")
    ax.plot(
        [0, 100],
        [curve.weak_performance, curve.strong_performance],
        ":",
        color="grey",
        label="random (APGR 0.5)",
    )
    ax.axhline(curve.weak_performance, linestyle="--", color="tab:orange", label=weak)
    ax.axhline(curve.strong_performance, linestyle="--", color="tab:red", label=strong)
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("performance")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write plot: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)

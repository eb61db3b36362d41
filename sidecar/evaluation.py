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

The metric functions are pure. The `inference-router eval` command at the bottom (and
the data/index/config plumbing it shares with `calibrate`) is the only part doing I/O.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import yaml

from sidecar.classifier import ClassifierConfig, RouteVerdict, vote
from sidecar.embedder import Embedder
from sidecar.errors import ConfigError
from sidecar.index import ExemplarIndex, IndexKind, Projection, build_index, embed_in_batches
from sidecar.labels import (
    STRONG,
    WEAK,
    LabelledRow,
    LabelRule,
    load_rows,
    quality,
    split_by_hash,
    to_exemplars,
)


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
            raise ValueError("the weak and strong models perform equally: PGR is undefined")
        return tuple((p - self.weak_performance) / gap for p in self.performance)


def routing_curve(
    scores: Sequence[float], weak_quality: Sequence[float], strong_quality: Sequence[float]
) -> RoutingCurve:
    """Sweep the share of strong calls by sending the highest-scored prompts to strong first."""
    n = len(scores)
    if not n or len(weak_quality) != n or len(strong_quality) != n:
        raise ValueError("scores and qualities must be non-empty and of equal length")
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
        raise ConfigError(f"{path}: cannot write curve CSV: {exc.strerror or exc}") from exc


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
        raise ConfigError(f"{path}: cannot write plot: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: map non-finite metrics to None."""
    return None if value is None or not math.isfinite(value) else value


# --- the `inference-router eval` command and the plumbing `calibrate` shares -------------


@dataclass(frozen=True)
class EvalData:
    """Exemplar rows (None when a prebuilt index is used) and test rows."""

    exemplars: list[LabelledRow] | None
    test: list[LabelledRow]


def add_data_arguments(parser: argparse.ArgumentParser, *, test: bool) -> None:
    """Where exemplars (or a built index) and, for eval, test rows come from."""
    source = parser.add_argument_group("data")
    source.add_argument("--exemplars", type=Path, nargs="+", help="exemplar JSONL file(s)")
    source.add_argument("--index", type=Path, help="a built index instead of --exemplars")
    if test:
        source.add_argument("--test", type=Path, help="test JSONL (route or outcome rows)")
    source.add_argument(
        "--split",
        type=Path,
        help="one JSONL file split by a hash of the text into exemplars and held-out rows",
    )
    source.add_argument("--holdout", type=float, default=0.3, help="held-out share for --split")
    source.add_argument("--split-seed", default="", help="salt of the --split hash")
    source.add_argument("--weak", help="weak model name in outcome rows")
    source.add_argument("--strong", help="strong model name in outcome rows")
    source.add_argument(
        "--label-rule",
        choices=get_args(LabelRule),
        default="gain",
        help="how outcome rows become route labels (see sidecar/labels.py)",
    )
    build = parser.add_argument_group("index built in memory from --exemplars/--split")
    build.add_argument("--projection", choices=get_args(Projection), default="none")
    build.add_argument("--kind", choices=get_args(IndexKind), default="auto")
    parser.add_argument("--data-dir", type=Path, default=None, help="embedding model cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    vote_args = parser.add_argument_group("classifier (override the settings file)")
    if test:
        vote_args.add_argument(
            "--config", type=Path, help="settings YAML with a classifier: section"
        )
    vote_args.add_argument("--k", type=int)
    vote_args.add_argument("--threshold", type=float)
    vote_args.add_argument("--temperature", type=float)
    vote_args.add_argument("--min-margin", type=float)


def gather_data(args: argparse.Namespace, *, need_test: bool) -> EvalData:
    """Read exemplar and test rows as the flags say, refusing contradictory combinations."""
    test_path: Path | None = getattr(args, "test", None)
    if args.split is not None:
        if args.exemplars or args.index or test_path:
            raise ConfigError("--split replaces --exemplars, --index and --test")
        kept, held = split_by_hash(
            load_rows(args.split), holdout=args.holdout, salt=args.split_seed
        )
        return EvalData(exemplars=kept, test=held)
    if (args.exemplars is None) == (args.index is None):
        raise ConfigError("give exactly one of --exemplars, --index or --split")
    if need_test and test_path is None:
        raise ConfigError("--test is required unless --split is given")
    exemplars = None
    if args.exemplars is not None:
        exemplars = [row for path in args.exemplars for row in load_rows(path)]
    test = load_rows(test_path) if test_path is not None else []
    return EvalData(exemplars=exemplars, test=test)


def load_classifier_config(
    args: argparse.Namespace, settings: Path | None, *, must_exist: bool = True
) -> ClassifierConfig:
    """The `classifier:` section of the settings file, then the command-line overrides."""
    section: dict[str, object] = {}
    if settings is not None and (must_exist or settings.exists()):
        section = dict(read_classifier_section(settings))
    overrides = {
        "k": args.k,
        "threshold": args.threshold,
        "temperature": args.temperature,
        "min_margin": args.min_margin,
    }
    section.update({key: value for key, value in overrides.items() if value is not None})
    if args.weak is not None and args.strong is not None and "two_model" not in section:
        # Outcome rows are labelled with these names (sidecar/labels.py), not model names.
        section["two_model"] = {"weak": WEAK, "strong": STRONG}
    where = f"{settings}: classifier" if settings is not None else "classifier"
    return ClassifierConfig.from_mapping(section, where=where)


def read_classifier_section(path: Path) -> Mapping[str, object]:
    """The `classifier:` mapping of a settings YAML file (empty if absent)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: settings must be a YAML mapping")
    section = loaded.get("classifier", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: classifier: must be a mapping")
    return section


def obtain_index(
    args: argparse.Namespace, exemplar_rows: list[LabelledRow] | None, embedder: Embedder
) -> ExemplarIndex:
    """Load --index (checking the embedder fingerprint) or build one in memory."""
    if exemplar_rows is None:
        if args.projection != "none" or args.kind != "auto":
            raise ConfigError("--projection and --kind shape an index being built, not --index")
        return ExemplarIndex.load(args.index, expected_fingerprint=embedder.fingerprint)
    exemplars = to_exemplars(
        exemplar_rows, weak=args.weak, strong=args.strong, rule=args.label_rule
    )
    return build_index(
        exemplars, embedder, kind=args.kind, projection=args.projection, progress=not args.quiet
    )


def classify(
    texts: Sequence[str],
    embedder: Embedder,
    index: ExemplarIndex,
    config: ClassifierConfig,
    *,
    progress: bool,
) -> list[RouteVerdict]:
    """Embed, search and vote for each text."""
    vectors = embed_in_batches(texts, embedder, progress=progress)
    return [vote(found, config) for found in index.search(vectors, config.k)]


def configure_eval_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router eval`."""
    add_data_arguments(parser, test=True)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--scores-out", type=Path, help='write {"text","score"} per test row')
    out.add_argument("--plot", type=Path, help="two-model curve as PNG (needs matplotlib)")
    out.add_argument("--curve-csv", type=Path, help="two-model curve as CSV")


def run_eval(args: argparse.Namespace) -> int:
    """Classify the test rows and print route metrics and/or two-model metrics."""
    from sidecar.embedder import load_default_embedder

    data = gather_data(args, need_test=True)
    config = load_classifier_config(args, args.config)
    embedder = load_default_embedder(args.data_dir)
    index = obtain_index(args, data.exemplars, embedder)
    verdicts = classify(
        [row.text for row in data.test], embedder, index, config, progress=not args.quiet
    )
    report: dict[str, object] = {
        "rows": len(data.test),
        "exemplars": len(index),
        "index": {"kind": index.kind, "projection": index.projection},
        "classifier": config.model_dump(mode="json"),
    }
    route_rows = [(row, v) for row, v in zip(data.test, verdicts, strict=True) if not row.outcomes]
    if route_rows:
        metrics = classification_metrics(
            [row.route for row, _ in route_rows], [v.route for _, v in route_rows]
        )
        report["classification"] = asdict(metrics)
        reasons = Counter(v.abstain_reason for _, v in route_rows if v.abstain_reason)
        report["abstain_reasons"] = dict(sorted(reasons.items()))
    outcome_rows = [(row, v) for row, v in zip(data.test, verdicts, strict=True) if row.outcomes]
    curve: RoutingCurve | None = None
    if outcome_rows:
        report["two_model"], curve = _two_model_report(args, config, outcome_rows)
    if args.scores_out is not None:
        _write_scores(args.scores_out, data.test, verdicts)
    if curve is not None and args.curve_csv is not None:
        write_curve_csv(curve, args.curve_csv)
    if curve is not None and args.plot is not None:
        title = f"{args.weak} vs {args.strong}: APGR {apgr(curve):.3f} (random 0.5)"
        plot_curve(curve, args.plot, title=title, weak=args.weak, strong=args.strong)
    print(json.dumps(report) if args.json else _human(report))
    return 0


def _two_model_report(
    args: argparse.Namespace,
    config: ClassifierConfig,
    rows: list[tuple[LabelledRow, RouteVerdict]],
) -> tuple[dict[str, object], RoutingCurve]:
    if args.weak is None or args.strong is None:
        raise ConfigError("outcome rows in the test set need --weak and --strong model names")
    scores = [0.5 if v.need_score is None else v.need_score for _, v in rows]
    weak_q = [quality(row, args.weak) for row, _ in rows]
    strong_q = [quality(row, args.strong) for row, _ in rows]
    try:
        metrics, curve = two_model_metrics(scores, weak_q, strong_q)
    except ValueError as exc:
        raise ConfigError(f"two-model metrics: {exc}") from exc
    report: dict[str, object] = {"weak": args.weak, "strong": args.strong, **asdict(metrics)}
    if config.two_model is not None:
        point = operating_point(scores, weak_q, strong_q, config.two_model.need_threshold)
        report["operating_point"] = asdict(point)
    return report, curve


def _write_scores(
    path: Path, rows: Sequence[LabelledRow], verdicts: Sequence[RouteVerdict]
) -> None:
    try:
        with path.open("w", encoding="utf-8") as handle:
            for row, verdict in zip(rows, verdicts, strict=True):
                score = verdict.need_score if verdict.need_score is not None else verdict.confidence
                line = {"text": row.text, "score": score, "route": verdict.route}
                handle.write(json.dumps(line) + "\n")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write scores: {exc.strerror or exc}") from exc


def _human(report: Mapping[str, object]) -> str:
    lines = [f"test rows: {report['rows']}   exemplars: {report['exemplars']}"]
    for section in ("classification", "abstain_reasons", "two_model"):
        value = report.get(section)
        if isinstance(value, dict):
            lines.append(f"{section}:")
            lines.extend(_indented(value, "  "))
    return "\n".join(lines)


def _indented(values: Mapping[str, object], indent: str) -> list[str]:
    lines = []
    for key, item in values.items():
        if isinstance(item, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_indented(item, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {f'{item:.4f}' if isinstance(item, float) else item}")
    return lines

"""The `inference-router eval` command, and the data/index/config plumbing `calibrate` shares.

Reads exemplar and test rows (or one file split by hash), loads or builds an index,
classifies the test rows, and reports the metrics of sidecar/evaluation.py as text or
JSON, optionally with per-row scores and the two-model curve as CSV/PNG. This is the I/O
edge; the metrics themselves are pure.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

from sidecar.batch_embedding import embed_in_batches
from sidecar.classifier import ClassifierConfig, RouteVerdict, vote
from sidecar.embedder import Embedder
from sidecar.errors import ConfigError
from sidecar.evaluation import (
    RoutingCurve,
    apgr,
    classification_metrics,
    operating_point,
    plot_curve,
    two_model_metrics,
    write_curve_csv,
)
from sidecar.index import ExemplarIndex, IndexKind, Projection, build_index
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
from sidecar.yaml_file import read_yaml_mapping


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
    section = read_yaml_mapping(path, "settings", empty_ok=True).get("classifier", {})
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

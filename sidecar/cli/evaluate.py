"""`inference-router eval`: measure routing quality on labelled data.

Reads exemplar and test rows (or one file split by hash), loads or builds an index,
classifies the test rows, and reports the metrics of `sidecar.evaluation.metrics` as text
or JSON, optionally with per-row scores and the two-model curve as CSV/PNG.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.cli.data_options import add_data_arguments
from sidecar.config.files import write_text_atomically
from sidecar.core.vote import RouteVerdict, VoteConfig
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import LabelledRow, quality

if TYPE_CHECKING:
    from sidecar.evaluation.metrics import RoutingCurve

HELP = "measure routing quality on labelled data"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router eval`."""
    add_data_arguments(parser, test=True)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--scores-out", type=Path, help='write {"text","score"} per test row')
    out.add_argument("--plot", type=Path, help="two-model curve as PNG (needs matplotlib)")
    out.add_argument("--curve-csv", type=Path, help="two-model curve as CSV")


def run(args: argparse.Namespace) -> int:
    """Classify the test rows and print route metrics and/or two-model metrics."""
    from sidecar.evaluation.metrics import apgr, classification_metrics, plot_curve, write_curve_csv
    from sidecar.evaluation.pipeline import classify, gather_data, load_vote_config, obtain_index
    from sidecar.semantic.model_store import load_default_embedder

    data = gather_data(args, need_test=True)
    config = load_vote_config(args, args.config)
    embedder = load_default_embedder(args.data_dir)
    index = obtain_index(args, data.exemplars, embedder)
    verdicts = classify(
        [row.text for row in data.test], embedder, index, config, progress=not args.quiet
    )
    report: dict[str, object] = {
        "rows": len(data.test),
        "exemplars": len(index),
        "index": {"kind": index.kind, "projection": index.projection},
        "classifier": asdict(config),
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
    config: VoteConfig,
    rows: list[tuple[LabelledRow, RouteVerdict]],
) -> tuple[dict[str, object], RoutingCurve]:
    from sidecar.evaluation.metrics import operating_point, two_model_metrics

    if args.weak is None or args.strong is None:
        raise ConfigError("outcome rows in the test set need --weak and --strong model names")
    scores = [0.5 if v.need_score is None else v.need_score for _, v in rows]
    weak_q = [quality(row, args.weak) for row, _ in rows]
    strong_q = [quality(row, args.strong) for row, _ in rows]
    metrics, curve = two_model_metrics(scores, weak_q, strong_q)
    report: dict[str, object] = {"weak": args.weak, "strong": args.strong, **asdict(metrics)}
    if config.two_model is not None:
        point = operating_point(scores, weak_q, strong_q, config.two_model.need_threshold)
        report["operating_point"] = asdict(point)
    return report, curve


def _write_scores(
    path: Path, rows: Sequence[LabelledRow], verdicts: Sequence[RouteVerdict]
) -> None:
    lines = []
    for row, verdict in zip(rows, verdicts, strict=True):
        score = verdict.need_score if verdict.need_score is not None else verdict.confidence
        lines.append(json.dumps({"text": row.text, "score": score, "route": verdict.route}))
    write_text_atomically(path, "".join(line + "\n" for line in lines))


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

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
from sidecar.core.vote import STAGE_STATIC, RouteVerdict, VoteConfig
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import LabelledRow, quality

if TYPE_CHECKING:
    from sidecar.evaluation.metrics import RoutingCurve
    from sidecar.semantic.index import ExemplarIndex
    from sidecar.semantic.static_embedder import StaticEmbedder

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
    from sidecar.evaluation.pipeline import (
        classify,
        gather_data,
        load_static,
        load_vote_config,
        obtain_index,
    )
    from sidecar.semantic import model_store

    data = gather_data(args, need_test=True)
    config = load_vote_config(args, args.config)
    embedder = model_store.load_default_embedder(args.data_dir, quantize=args.quantize)
    static = load_static(args, embedder)
    index = obtain_index(args, data.exemplars, embedder, static)
    texts = [row.text for row in data.test]
    verdicts = classify(
        texts, embedder, index, config, static=static, mode=args.stage1, progress=not args.quiet
    )
    report: dict[str, object] = {
        "rows": len(data.test),
        "exemplars": len(index),
        "index": {
            "kind": index.kind,
            "projection": index.projection,
            "heads": None if index.heads is None else index.heads.meta()["fits"],
        },
        "classifier": asdict(config),
        "stages": _stages_report(args, data.test, verdicts, texts, static, index, config),
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


def _stages_report(
    args: argparse.Namespace,
    rows: Sequence[LabelledRow],
    verdicts: Sequence[RouteVerdict],
    texts: Sequence[str],
    static: StaticEmbedder | None,
    index: ExemplarIndex,
    config: VoteConfig,
) -> dict[str, object]:
    """Which stage decided how many rows, how well, and what stage 1 costs per prompt."""
    from sidecar.evaluation.pipeline import stage1_cost_us
    from sidecar.semantic.stages import has_stage1, stage1_may_decide

    first = [(row, v) for row, v in zip(rows, verdicts, strict=True) if v.stage == STAGE_STATIC]
    route_rows = [(row, v) for row, v in first if not row.outcomes]
    report: dict[str, object] = {
        "mode": args.stage1,
        "stage1_share": len(first) / len(rows) if rows else None,
        # Route rows decided on stage 1: the right route, or an abstention on out-of-scope.
        "stage1_accuracy": (
            sum(row.route == v.route for row, v in route_rows) / len(route_rows)
            if route_rows
            else None
        ),
        "stage1_us_per_prompt": None,
    }
    runs = args.stage1 == "only" or (args.stage1 == "gate" and stage1_may_decide(config))
    if static is not None and has_stage1(index) and runs:
        report["stage1_us_per_prompt"] = stage1_cost_us(texts, static, index, config)
    return report


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
    for section in ("classification", "abstain_reasons", "stages", "two_model"):
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

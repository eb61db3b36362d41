"""`inference-router calibrate`: choose classifier thresholds to hit a target.

The calibration set is leave-one-out over the index's own exemplars unless
`--calibration FILE` gives explicit rows; the thresholds are written into the
`classifier:` section of the settings file (see `sidecar.evaluation.calibration`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sidecar.cli.data_options import add_data_arguments
from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import load_rows

HELP = "choose classifier thresholds to hit a target"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router calibrate`."""
    add_data_arguments(parser, test=False)
    parser.add_argument(
        "--settings", type=Path, required=True, help="settings YAML to read and update"
    )
    parser.add_argument(
        "--calibration", type=Path, help="explicit calibration rows (default: leave-one-out)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-oos-recall", type=float, help="out-of-scope recall to reach")
    target.add_argument("--target-strong-share", type=float, help="share of strong calls")
    parser.add_argument("--confidence", type=float, default=0.95, help="Wilson bound level")
    parser.add_argument(
        "--max-route-offset",
        type=float,
        default=0.05,
        help="how far a route's threshold may move from the global one (0: global only)",
    )


def run(args: argparse.Namespace) -> int:
    """Choose thresholds on the calibration set and write them under `classifier:`."""
    from sidecar.evaluation.calibration import (
        calibration_point,
        choose_need_threshold,
        choose_thresholds,
        leave_one_out,
        thresholds_off,
        write_classifier_settings,
    )
    from sidecar.evaluation.pipeline import classify, gather_data, load_vote_config, obtain_index
    from sidecar.semantic.model_store import load_default_embedder

    data = gather_data(args, need_test=False)
    config = load_vote_config(args, args.settings, must_exist=False)
    embedder = load_default_embedder(args.data_dir)
    index = obtain_index(args, data.exemplars, embedder)
    if args.calibration is not None:
        rows = load_rows(args.calibration)
        loose = thresholds_off(config)
        verdicts = classify([r.text for r in rows], embedder, index, loose, progress=not args.quiet)
        golds = [r.route for r in rows]
    else:
        verdicts = leave_one_out(index, config)
        golds = [None if r == OUT_OF_SCOPE else r for r in index.routes]
    overrides = {
        key: getattr(args, key)
        for key in ("k", "temperature", "min_margin")
        if getattr(args, key) is not None
    }
    if args.target_strong_share is not None:
        if config.two_model is None:
            raise ConfigError("--target-strong-share needs --weak/--strong or classifier.two_model")
        needs = [0.5 if v.need_score is None else v.need_score for v in verdicts]
        threshold, share = choose_need_threshold(needs, args.target_strong_share)
        two_model = dataclasses.replace(config.two_model, need_threshold=threshold)
        write_classifier_settings(
            args.settings, {**overrides, "two_model": dataclasses.asdict(two_model)}
        )
        print(f"need_threshold {threshold:.4f}: {share:.3f} strong on {len(needs)} prompts")
        return 0
    points = [calibration_point(v, g) for v, g in zip(verdicts, golds, strict=True)]
    choice = choose_thresholds(
        points,
        target_recall=args.target_oos_recall,
        confidence=args.confidence,
        max_route_offset=args.max_route_offset,
    )
    write_classifier_settings(
        args.settings,
        {
            **overrides,
            "threshold": choice.threshold,
            "route_thresholds": dict(sorted(choice.route_thresholds.items())),
        },
    )
    print(
        f"threshold {choice.threshold:.4f} ({len(choice.route_thresholds)} routes adjusted) on "
        f"{choice.n_in_scope} in-scope / {choice.n_out_of_scope} out-of-scope prompts: "
        f"accuracy {choice.accuracy:.4f}, out-of-scope recall {choice.oos_recall:.4f} "
        f"(required {choice.required_recall:.4f} for {args.target_oos_recall} at "
        f"confidence {args.confidence})"
    )
    return 0

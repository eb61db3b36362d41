"""`inference-router calibrate`: choose classifier thresholds (and stages) to hit a target.

The calibration set is leave-one-out over the index's own exemplars (with the heads'
out-of-fold probabilities) unless `--calibration FILE` gives explicit rows; the choices
are written into the `classifier:` section of the settings file (see
`sidecar.evaluation.calibration`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.cli.data_options import add_data_arguments
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import load_rows

if TYPE_CHECKING:
    from sidecar.core.vote import VoteConfig
    from sidecar.semantic.index import ExemplarIndex

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
    target.add_argument(
        "--target-oos-recall",
        type=float,
        help="out-of-scope recall to reach (without out-of-scope exemplars: thresholds off)",
    )
    target.add_argument("--target-strong-share", type=float, help="share of strong calls")
    parser.add_argument("--confidence", type=float, default=0.95, help="Wilson bound level")
    parser.add_argument(
        "--keep-shape",
        action="store_true",
        help="keep the configured k and temperature (default: leave-one-out picks them, "
        "unless --k/--temperature are given)",
    )
    parser.add_argument(
        "--max-route-offset",
        type=float,
        default=0.05,
        help="how far a route's threshold may move from the global one (0: global only)",
    )
    stages = parser.add_argument_group("stages (indexes with linear heads)")
    stages.add_argument(
        "--decider",
        dest="choose_decider",
        choices=("auto", "knn", "head"),
        default="auto",
        help="stage 2 decides by the kNN vote or the head; auto: the more accurate",
    )
    stages.add_argument(
        "--stage1-gate",
        dest="choose_gate",
        metavar="auto|off|P",
        default="auto",
        help="auto: the lowest gate within --max-stage1-loss; off; or a probability",
    )
    stages.add_argument(
        "--max-stage1-loss",
        type=float,
        default=0.0,
        help="in-scope accuracy stage 1 may cost against stage 2 alone (default 0)",
    )


def run(args: argparse.Namespace) -> int:
    """Choose thresholds on the calibration set and write them under `classifier:`."""
    from sidecar.evaluation.calibration import (
        choose_need_threshold,
        choose_stages,
        staged_leave_one_out,
        write_classifier_settings,
    )
    from sidecar.evaluation.pipeline import (
        gather_data,
        load_static,
        load_vote_config,
        obtain_index,
        staged_points,
    )
    from sidecar.semantic import model_store

    data = gather_data(args, need_test=False)
    config = load_vote_config(args, args.settings, must_exist=False)
    embedder = model_store.load_default_embedder(args.data_dir, quantize=args.quantize)
    static = load_static(args, embedder)
    index = obtain_index(args, data.exemplars, embedder, static, evidence=True)
    shape: dict[str, object] = {}
    if not args.keep_shape and args.k is None and args.temperature is None:
        config = _choose_shape(args, index, config)
        shape = {"k": config.k, "temperature": config.temperature}
    if args.calibration is not None:
        rows = load_rows(args.calibration)
        points = staged_points(
            [r.text for r in rows],
            [r.route for r in rows],
            embedder,
            index,
            config,
            static=static,
            progress=not args.quiet,
        )
    else:
        points = staged_leave_one_out(index, config)
    verdicts = [p.knn for p in points]
    overrides = shape | {
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
    gate: float | str | None = args.choose_gate
    if gate not in ("auto", "off"):
        try:
            gate = float(str(gate))
        except ValueError:
            raise ConfigError(
                f"--stage1-gate: expected auto, off or a number, got {gate!r}"
            ) from None
    stages = choose_stages(
        points,
        config,
        target_recall=args.target_oos_recall,
        confidence=args.confidence,
        max_route_offset=args.max_route_offset,
        decider=None if args.choose_decider == "auto" else args.choose_decider,
        gate=None if gate == "off" else gate,
        max_stage1_loss=args.max_stage1_loss,
    )
    write_classifier_settings(args.settings, {**overrides, **stages.settings()})
    choice = stages.thresholds
    if choice.n_out_of_scope == 0:
        print(
            f"no out-of-scope prompts among {choice.n_in_scope}: similarity thresholds off, "
            f"accuracy {choice.accuracy:.4f}"
        )
    else:
        print(
            f"threshold {choice.threshold:.4f} ({len(choice.route_thresholds)} routes adjusted) "
            f"on {choice.n_in_scope} in-scope / {choice.n_out_of_scope} out-of-scope prompts: "
            f"accuracy {choice.accuracy:.4f}, out-of-scope recall {choice.oos_recall:.4f} "
            f"(required {choice.required_recall:.4f} for {args.target_oos_recall} at "
            f"confidence {args.confidence})"
        )
    head = "no head" if stages.head_accuracy is None else f"head {stages.head_accuracy:.4f}"
    print(
        f"decider {stages.decider} (kNN {stages.knn_accuracy:.4f}, {head}), "
        f"head_threshold {stages.head_threshold:.2f}"
    )
    if stages.stage1_threshold is not None:
        alone = stages.stage1_alone
        print(
            f"stage 1: threshold {stages.stage1_threshold:.4f}"
            + ("" if alone is None else f" (alone: accuracy {alone[0]:.4f}, recall {alone[1]:.4f})")
            + f", gate {stages.stage1_gate} deciding {stages.stage1_share:.3f} of prompts; "
            f"both stages: accuracy {stages.accuracy:.4f}, out-of-scope recall "
            f"{stages.oos_recall:.4f}"
        )
    return 0


def _choose_shape(args: argparse.Namespace, index: ExemplarIndex, config: VoteConfig) -> VoteConfig:
    """k and temperature by leave-one-out on the exemplars (sidecar/evaluation/vote_shape.py)."""
    from sidecar.core.vote import OUT_OF_SCOPE
    from sidecar.evaluation.vote_shape import (
        accuracy_at_recall,
        choose_vote_shape,
        in_scope_accuracy,
        need_apgr,
    )

    if args.target_strong_share is not None and config.two_model is not None:
        objective, name = need_apgr(config.two_model.weak, config.two_model.strong), "APGR"
    elif args.target_oos_recall is not None and OUT_OF_SCOPE in index.routes:
        objective = accuracy_at_recall(args.target_oos_recall, args.confidence)
        name = f"in-scope accuracy at out-of-scope recall {args.target_oos_recall}"
    else:
        objective, name = in_scope_accuracy, "in-scope accuracy"
    choice = choose_vote_shape(index, config, objective, objective_name=name)
    best, configured = choice.best, choice.configured
    print(
        f"k {best.k}, temperature {best.temperature:g}: leave-one-out {name} {best.score:.4f} "
        f"(configured k {configured.k}, temperature {configured.temperature:g}: "
        f"{configured.score:.4f}; {len(choice.tried)} pairs tried)"
    )
    return dataclasses.replace(config, k=best.k, temperature=best.temperature)

"""The model, data, index and classifier options the commands that embed share.

Argument definitions only: importing this module loads nothing heavy (no FAISS, no ONNX
Runtime), so building the parser for any subcommand stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from sidecar.core.vote import Decider
from sidecar.evaluation.datasets import LabelRule
from sidecar.semantic.options import IndexKind, Projection, Quantize, Stage1Mode


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which embedding model: where it is cached and which variant (the sidecar's must match)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedding model cache (default: $INFERENCE_ROUTER_DATA, else "
        "$XDG_CACHE_HOME/inference-router, else ~/.cache/inference-router)",
    )
    parser.add_argument(
        "--quantize",
        choices=get_args(Quantize),
        default="auto",
        help="the MiniLM variant, as the sidecar's semantic.quantize (default auto: int8 "
        "where the CPU has VNNI, else fp32); an index or scorer fits only its own variant",
    )


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
        help="how outcome rows become route labels (see sidecar/evaluation/datasets.py)",
    )
    build = parser.add_argument_group("index built in memory from --exemplars/--split")
    build.add_argument("--projection", choices=get_args(Projection), default="none")
    build.add_argument("--kind", choices=get_args(IndexKind), default="auto")
    build.add_argument(
        "--no-heads", action="store_true", help="no linear heads (kNN only, no stage 1)"
    )
    add_model_arguments(parser)
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
    if test:  # calibrate chooses these itself (sidecar/cli/calibrate.py)
        vote_args.add_argument(
            "--decider", choices=get_args(Decider), help="stage 2 decides by kNN or the head"
        )
        vote_args.add_argument("--head-threshold", type=float)
        vote_args.add_argument(
            "--stage1-gate", metavar="P|off", help="stage 1 decides alone at this probability"
        )
        vote_args.add_argument("--stage1-threshold", type=float)
        vote_args.add_argument(
            "--stage1",
            choices=get_args(Stage1Mode),
            default="gate",
            help="gate: as the sidecar decides (default); only: every prompt on stage 1, as "
            "under overload; off: every prompt on the encoder",
        )

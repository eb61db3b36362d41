"""`inference-router index build`: exemplar files in, a saved index (FAISS + heads) out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from sidecar.cli.data_options import add_model_arguments
from sidecar.evaluation.datasets import load_rows, to_exemplars
from sidecar.semantic.exemplars import load_exemplars
from sidecar.semantic.options import IndexKind, Projection

HELP = "embed exemplars into a FAISS index"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router index build`."""
    parser.add_argument("exemplars", type=Path, nargs="+", help="JSONL exemplar file(s)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="index directory")
    parser.add_argument("--kind", choices=get_args(IndexKind), default="auto")
    parser.add_argument("--hnsw-threshold", type=int, default=50_000)
    parser.add_argument(
        "--projection",
        choices=get_args(Projection),
        default="none",
        help="lda: learn a route-discriminating projection from the exemplars (many routes)",
    )
    parser.add_argument(
        "--store-texts",
        action="store_true",
        help="keep exemplar texts in meta.json (for explanations; off by default for privacy)",
    )
    parser.add_argument(
        "--no-heads",
        action="store_true",
        help="skip the linear heads: no stage 1, kNN only (heads take ~1 min per 15k exemplars)",
    )
    add_model_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    outcomes = parser.add_argument_group("outcome rows {text, outcomes} as exemplars")
    outcomes.add_argument("--weak", help="weak model name in the outcome rows")
    outcomes.add_argument("--strong", help="strong model name in the outcome rows")
    outcomes.add_argument(
        "--label-rule",
        choices=("gain", "strong-wins", "weak-fails"),
        default="gain",
        help="how outcome rows become weak/strong/tie labels (sidecar/evaluation/datasets.py)",
    )


def run(args: argparse.Namespace) -> int:
    """Build an index from exemplar files with the default embedder and save it."""
    from sidecar.semantic import model_store
    from sidecar.semantic.index import build_index
    from sidecar.semantic.static_embedder import TokenTeacher

    if args.weak is not None or args.strong is not None:
        rows = [row for path in args.exemplars for row in load_rows(path)]
        exemplars = to_exemplars(rows, weak=args.weak, strong=args.strong, rule=args.label_rule)
    else:
        exemplars = [e for path in args.exemplars for e in load_exemplars(path)]
    embedder = model_store.load_default_embedder(args.data_dir, quantize=args.quantize)
    static = None
    if not args.no_heads and isinstance(embedder, TokenTeacher):
        static = model_store.load_static_embedder(embedder, args.data_dir)
    index = build_index(
        exemplars,
        embedder,
        kind=args.kind,
        hnsw_threshold=args.hnsw_threshold,
        progress=not args.quiet,
        projection=args.projection,
        store_texts=args.store_texts,
        heads=not args.no_heads,
        static=static,
    )
    index.save(args.output)
    counts = index.route_counts()
    print(
        f"wrote {args.output}: {len(index)} exemplars, {len(counts)} routes, "
        f"{index.kind} index, embedder {index.fingerprint}"
    )
    heads = index.heads
    if heads is not None:
        for stage, fit in (("stage 1", heads.stage1_fit), ("stage 2", heads.stage2_fit)):
            if fit is not None:
                print(
                    f"{stage} head: l2 {fit.l2:g} by {fit.folds}-fold cross-validation "
                    f"(out-of-fold log loss {fit.log_loss:.4f})"
                )
    return 0

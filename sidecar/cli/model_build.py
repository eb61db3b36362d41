"""`inference-router model build`: build (or find) the default ONNX model and its static table."""

from __future__ import annotations

import argparse
from pathlib import Path

from sidecar.cli.data_options import add_model_arguments

HELP = "build the ONNX embedding model and its stage-1 static table"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router model build`."""
    add_model_arguments(parser)
    parser.add_argument(
        "--no-static",
        action="store_true",
        help="skip the stage-1 static table (distilled from the model, ~20 s once)",
    )


def run(args: argparse.Namespace) -> int:
    """Build (or find) the default model and print its path and fingerprint."""
    from sidecar.semantic.model_store import (
        DEFAULT_TOKENIZER_NAME,
        default_data_dir,
        default_model_path,
        ensure_static_table,
        load_default_embedder,
        model_weights,
        static_table_path,
    )

    data_dir: Path = default_data_dir() if args.data_dir is None else args.data_dir
    embedder = load_default_embedder(data_dir, quantize=args.quantize, threads=1)
    print(f"model: {default_model_path(data_dir, model_weights(args.quantize))}")
    print(f"tokenizer: {data_dir / DEFAULT_TOKENIZER_NAME}")
    print(f"dim: {embedder.dim}")
    print(f"fingerprint (max_tokens={embedder.max_tokens}): {embedder.fingerprint}")
    if not args.no_static:
        # The sidecar distils from the model it runs, so the table follows --quantize.
        table = ensure_static_table(embedder, data_dir)
        print(f"static table: {static_table_path(data_dir, embedder.fingerprint)}")
        print(f"static dim: {table.dims} (vocabulary {table.vocab_size})")
        print(f"static fingerprint: {table.fingerprint}")
    return 0

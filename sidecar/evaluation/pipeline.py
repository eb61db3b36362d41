"""The plumbing `eval` and `calibrate` share, over their common command-line options.

Where exemplar and test rows come from (files, or one file split by a hash), the
classifier settings (file, then flags), the index (loaded, or built in memory), and the
classification of many texts at once. The metrics themselves are pure
(`sidecar.evaluation.metrics`); the commands are `sidecar.cli.evaluate` and
`sidecar.cli.calibrate`, and their shared options `sidecar.cli.data_options`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.files import read_yaml_mapping
from sidecar.config.validation import validate
from sidecar.core.vote import RouteVerdict, VoteConfig, vote
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import (
    STRONG,
    WEAK,
    LabelledRow,
    load_rows,
    split_by_hash,
    to_exemplars,
)
from sidecar.semantic.corpus import embed_corpus
from sidecar.semantic.embedder import Embedder
from sidecar.semantic.index import ExemplarIndex, build_index


@dataclass(frozen=True)
class EvalData:
    """Exemplar rows (None when a prebuilt index is used) and test rows."""

    exemplars: list[LabelledRow] | None
    test: list[LabelledRow]


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


def load_vote_config(
    args: argparse.Namespace, settings: Path | None, *, must_exist: bool = True
) -> VoteConfig:
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
        # Outcome rows are labelled with these names (evaluation/datasets.py), not model names.
        section["two_model"] = {"weak": WEAK, "strong": STRONG}
    source = str(settings) if settings is not None else "command line"
    return validate(VoteConfig, section, source, section="classifier")


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
    config: VoteConfig,
    *,
    progress: bool,
) -> list[RouteVerdict]:
    """Embed, search and vote for each text."""
    vectors = embed_corpus(texts, embedder, progress=progress)
    return [vote(found, config) for found in index.search(vectors, config.k)]

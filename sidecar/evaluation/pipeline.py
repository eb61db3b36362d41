"""The plumbing `eval` and `calibrate` share, over their common command-line options.

Where exemplar and test rows come from (files, or one file split by a hash), the
classifier settings (file, then flags), the stage-1 static embedder, the index (loaded,
or built in memory with its heads), and the classification of many texts at once through
the same two stages the sidecar runs (`sidecar.semantic.stages`). The metrics themselves are pure
(`sidecar.evaluation.metrics`); the commands are `sidecar.cli.evaluate` and
`sidecar.cli.calibrate`, and their shared options `sidecar.cli.data_options`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.files import read_yaml_mapping
from sidecar.config.validation import validate
from sidecar.core.vote import STAGE_MODEL, RouteVerdict, VoteConfig, head_vote, vote
from sidecar.errors import ConfigError
from sidecar.evaluation.calibration import StagedPoint, thresholds_off
from sidecar.evaluation.datasets import (
    STRONG,
    WEAK,
    LabelledRow,
    load_rows,
    split_by_hash,
    to_exemplars,
)
from sidecar.semantic import model_store
from sidecar.semantic.corpus import embed_corpus
from sidecar.semantic.embedder import Embedder
from sidecar.semantic.index import ExemplarIndex, build_index
from sidecar.semantic.options import Stage1Mode
from sidecar.semantic.stages import (
    decided_by_stage1,
    has_stage1,
    stage1_may_decide,
    stage1_verdict,
    stage2_verdict,
)
from sidecar.semantic.static_embedder import StaticEmbedder, TokenTeacher


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
        "decider": getattr(args, "decider", None),
        "head_threshold": getattr(args, "head_threshold", None),
        "stage1_threshold": getattr(args, "stage1_threshold", None),
    }
    section.update({key: value for key, value in overrides.items() if value is not None})
    gate = getattr(args, "stage1_gate", None)
    if gate is not None:
        section["stage1_gate"] = None if gate == "off" else _number(gate, "--stage1-gate")
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


def _number(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{flag}: expected a number or 'off', got {value!r}") from None


def load_static(args: argparse.Namespace, embedder: Embedder) -> StaticEmbedder | None:
    """The stage-1 embedder distilled from `embedder` (built into the data dir once).

    None with --no-heads or --stage1 off, or for an embedder that cannot teach a table.
    """
    if getattr(args, "no_heads", False) or getattr(args, "stage1", "gate") == "off":
        return None
    if not isinstance(embedder, TokenTeacher):
        return None
    return model_store.load_static_embedder(embedder, args.data_dir)


def obtain_index(
    args: argparse.Namespace,
    exemplar_rows: list[LabelledRow] | None,
    embedder: Embedder,
    static: StaticEmbedder | None = None,
    *,
    evidence: bool = False,
) -> ExemplarIndex:
    """Load --index (checking the embedder and static table) or build one in memory."""
    if exemplar_rows is None:
        if args.projection != "none" or args.kind != "auto" or args.no_heads:
            raise ConfigError(
                "--projection, --kind and --no-heads shape an index being built, not --index"
            )
        return ExemplarIndex.load(
            args.index,
            expected_fingerprint=embedder.fingerprint,
            expected_static=None if static is None else static.fingerprint,
            evidence=evidence,
        )
    exemplars = to_exemplars(
        exemplar_rows, weak=args.weak, strong=args.strong, rule=args.label_rule
    )
    return build_index(
        exemplars,
        embedder,
        kind=args.kind,
        projection=args.projection,
        progress=not args.quiet,
        heads=not args.no_heads,
        static=static,
    )


def classify(
    texts: Sequence[str],
    embedder: Embedder,
    index: ExemplarIndex,
    config: VoteConfig,
    *,
    static: StaticEmbedder | None = None,
    mode: Stage1Mode = "gate",
    progress: bool,
) -> list[RouteVerdict]:
    """Each text through stage 1 and, where it is not final, stage 2: the sidecar's path."""
    decided: list[RouteVerdict | None] = [None] * len(texts)
    # As in the sidecar, stage 1 runs only where it may decide.
    runs = mode == "only" or (mode == "gate" and stage1_may_decide(config))
    if runs and static is not None and index.heads is not None and has_stage1(index):
        heads = index.heads
        for i, row in enumerate(static.embed(texts)):
            first = stage1_verdict(heads, row, config, overloaded=mode == "only")
            if mode == "only" or decided_by_stage1(first, config):
                decided[i] = first
    elif mode == "only":
        raise ConfigError("--stage1 only needs an index with a stage-1 head and its static table")
    rest = [i for i, verdict in enumerate(decided) if verdict is None]
    if rest:
        vectors = embed_corpus([texts[i] for i in rest], embedder, progress=progress)
        found = index.search(vectors, config.k)
        for i, row, neighbours in zip(rest, vectors, found, strict=True):
            decided[i] = stage2_verdict(index, row, neighbours, config)
    return [verdict for verdict in decided if verdict is not None]


def stage1_cost_us(
    texts: Sequence[str],
    static: StaticEmbedder,
    index: ExemplarIndex,
    config: VoteConfig,
    *,
    passes: int = 3,
) -> float:
    """Mean wall time of stage 1 per prompt, as the sidecar runs it, in microseconds.

    Tokenize, look up, weighted mean, head, verdict: one prompt at a time, the best of
    `passes` passes over (at most 2,000 of) the texts.
    """
    heads = index.heads
    if heads is None or heads.stage1 is None or not texts:
        raise ConfigError("no stage-1 head to time")
    sample = list(texts[:2000])
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for text in sample:
            stage1_verdict(heads, static.embed_one(text), config)
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / len(sample)


def staged_points(
    texts: Sequence[str],
    golds: Sequence[str | None],
    embedder: Embedder,
    index: ExemplarIndex,
    config: VoteConfig,
    *,
    static: StaticEmbedder | None,
    progress: bool,
) -> list[StagedPoint]:
    """Explicit calibration rows through every stage, with thresholds off."""
    loose = thresholds_off(config)
    vectors = embed_corpus(texts, embedder, progress=progress)
    found = index.search(vectors, config.k)
    heads = index.heads
    first = None
    if static is not None and heads is not None and heads.stage1 is not None:
        first = [stage1_verdict(heads, row, loose) for row in static.embed(texts)]
    points = []
    for i, (gold, row, neighbours) in enumerate(zip(golds, vectors, found, strict=True)):
        head = None
        if heads is not None:
            scores = heads.scores(heads.stage2_probabilities(row))
            head = head_vote(scores, neighbours, loose, stage=STAGE_MODEL, min_probability=0.0)
        points.append(
            StagedPoint(
                gold=gold,
                knn=vote(neighbours, loose),
                head=head,
                stage1=None if first is None else first[i],
            )
        )
    return points

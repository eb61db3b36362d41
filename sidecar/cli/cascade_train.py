"""`inference-router cascade train`: fit the cascade's learned answer scorer on labelled answers.

Reads outcome rows `{"text", "outcomes": {model: quality}, "responses": {model: answer}}`
(RouteLLM's GSM8K file has this shape), takes the `--weak` model's answers, labels each
correct when its quality is at least 0.5, keeps the train side of the same hash split
`eval --split` uses (`--holdout`, `--split-seed`; `--holdout 0` trains on every row, the
scorer to ship), embeds what the scorer reads (`--embed`) with the router's embedder and
fits `sidecar.cascade.scorer`. Reports the out-of-fold ROC AUC, the held-out AUC when rows
are held out, and the confidence threshold that escalates `--target-escalation` of the
training answers (chosen on out-of-fold predictions): put it in the `cascade:` settings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from sidecar.cascade.scorer import EmbedText
from sidecar.cli.data_options import add_model_arguments
from sidecar.config.files import read_jsonl
from sidecar.errors import ConfigError
from sidecar.evaluation.datasets import hash_fraction

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

HELP = "train the cascade's answer scorer on answers of known correctness"
PASS_MARK = 0.5


@dataclass(frozen=True, slots=True)
class LabelledAnswer:
    """One model's answer to a prompt, and whether it was right."""

    prompt: str
    answer: str
    correct: bool


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router cascade train`."""
    parser.add_argument("--outcomes", type=Path, required=True, help="outcome rows (JSONL)")
    parser.add_argument("--weak", required=True, help="the model whose answers are scored")
    parser.add_argument("--holdout", type=float, default=0.3, help="held-out share (0: none)")
    parser.add_argument("--split-seed", default="", help="salt of the split hash")
    parser.add_argument(
        "--embed",
        choices=get_args(EmbedText),
        default="prompt",
        help="what the scorer embeds beside the answer's text features (default: the prompt, "
        "which the router has usually embedded already to route it)",
    )
    parser.add_argument(
        "--target-escalation",
        type=float,
        default=0.3,
        help="share of answers to escalate; the threshold doing so is reported",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="scorer file (.npz)")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train on the train side, save the scorer, report its quality and threshold."""
    from sidecar.cascade.scorer import (
        embedding_text,
        roc_auc,
        threshold_for_escalation,
        train_scorer,
    )
    from sidecar.semantic import model_store
    from sidecar.semantic.corpus import embed_corpus

    answers = load_labelled_answers(args.outcomes, args.weak)
    train, held = train_side(answers, holdout=args.holdout, salt=args.split_seed)
    embed_text: EmbedText = args.embed
    embedder = None
    if embed_text != "none":
        embedder = model_store.load_default_embedder(args.data_dir, quantize=args.quantize)

    def embed(rows: Sequence[LabelledAnswer]) -> npt.NDArray[np.float32] | None:
        if embedder is None:
            return None
        texts = [embedding_text(embed_text, a.prompt, a.answer) for a in rows]
        return embed_corpus(texts, embedder, progress=not args.quiet)

    trained = train_scorer(
        [a.prompt for a in train],
        [a.answer for a in train],
        [a.correct for a in train],
        embeddings=embed(train),
        embed_text=embed_text,
        embedder_fingerprint=None if embedder is None else embedder.fingerprint,
    )
    scorer = trained.scorer
    scorer.save(args.output)
    report: dict[str, object] = {
        "output": str(args.output),
        "weak": args.weak,
        "embed": embed_text,
        "train_rows": len(train),
        "train_correct": sum(a.correct for a in train) / len(train),
        "l2": scorer.l2,
        "out_of_fold_auc": scorer.out_of_fold_auc,
        "target_escalation": args.target_escalation,
        "threshold": threshold_for_escalation(trained.out_of_fold, args.target_escalation),
        "held_out_rows": len(held),
        "held_out_auc": None,
    }
    labels = {a.correct for a in held}
    if len(labels) == 2:
        vectors = embed(held)
        probabilities = [
            scorer.probability(a.prompt, a.answer, None if vectors is None else vectors[i])
            for i, a in enumerate(held)
        ]
        report["held_out_auc"] = roc_auc(probabilities, [a.correct for a in held])
    print(json.dumps(report) if args.json else _human(report))
    return 0


def _human(report: dict[str, object]) -> str:
    held = report["held_out_auc"]
    return (
        f"wrote {report['output']}: trained on {report['train_rows']} answers by "
        f"{report['weak']} ({report['train_correct']:.1%} correct), embedding: "
        f"{report['embed']}, l2 {report['l2']}\n"
        f"ROC AUC out-of-fold {report['out_of_fold_auc']:.3f}"
        + (f", held out ({report['held_out_rows']} rows) {held:.3f}" if held is not None else "")
        + f"\nthreshold escalating {report['target_escalation']:.0%} of answers: "
        f"{report['threshold']:.4f} (cascade.threshold in the settings)"
    )


def parse_labelled_answer(row: object, model: str, where: str) -> LabelledAnswer:
    """`model`'s answer and outcome from one outcome row; errors name `where` and the field."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: field 'text' must be a non-empty string")
    outcomes, responses = row.get("outcomes"), row.get("responses")
    if not isinstance(outcomes, dict) or not isinstance(responses, dict):
        raise ConfigError(f"{where}: fields 'outcomes' and 'responses' must be objects")
    quality, answer = outcomes.get(model), responses.get(model)
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        raise ConfigError(f"{where}: field 'outcomes.{model}' must be a number")
    if not isinstance(answer, str):
        raise ConfigError(f"{where}: field 'responses.{model}' must be a string")
    return LabelledAnswer(prompt=text, answer=answer, correct=quality >= PASS_MARK)


def load_labelled_answers(path: Path, model: str) -> list[LabelledAnswer]:
    """Every row's answer by `model`; ConfigError for an unreadable file or row."""
    answers = [parse_labelled_answer(row, model, where) for where, row in read_jsonl(path)]
    if not answers:
        raise ConfigError(f"{path}: no rows")
    return answers


def train_side(
    answers: Sequence[LabelledAnswer], *, holdout: float, salt: str
) -> tuple[list[LabelledAnswer], list[LabelledAnswer]]:
    """(train, held out) by the rule of `split_by_hash` (same hash, same side), so a scorer
    trained here never saw the prompts `eval --split` and the benchmark hold out."""
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout must be within [0, 1), got {holdout}")
    held_out = [hash_fraction(a.prompt, salt) < holdout for a in answers]
    train = [a for a, h in zip(answers, held_out, strict=True) if not h]
    held = [a for a, h in zip(answers, held_out, strict=True) if h]
    if not train:
        raise ConfigError(f"a holdout of {holdout} leaves nothing to train on")
    return train, held

"""The learned part of the answer evaluator: P(the answer is correct) from (prompt, answer).

Theory. A binary logistic regression over two blocks of inputs:

- the answer's text features (`sidecar.cascade.answer_text`: false calculations, a
  missing or fractional final number, hedges, lengths), standardised with the training
  rows' mean and spread and divided by sqrt(width), so the block has the scale of a unit
  embedding row;
- optionally the MiniLM embedding of one text (`EmbedText`): the prompt's routing text
  (`prompt`, the same text the router embeds to route, so a sidecar may already hold its
  vector) or the answer (`answer`, head and tail within the routing budget).

It is fitted with the router's own softmax regression (two classes, L-BFGS, the L2
penalty chosen by 5-fold cross-validated log loss). The out-of-fold probabilities of
the chosen penalty are the calibration evidence: the threshold for a target share of
escalations is chosen on them, never on a test set, and their ROC AUC is reported.

Measured on RouteLLM GSM8K (Mixtral's answers, five 30 % hash splits, mean held-out
AUC): features alone 0.771; features + the prompt's embedding 0.788; + the answer's
0.788; + "prompt [SEP] answer tail" 0.787; any embedding without the features 0.57-0.61.
The prompt's embedding is the default: it scores as well, and costs nothing extra when
the router has embedded the prompt to route it.

On disk a scorer is one `.npz` (arrays) whose `meta` entry is JSON: format, what text
is embedded, the embedder's fingerprint (a scorer is refused by another embedder, like
an index), the feature names, the penalty and the out-of-fold AUC.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from sidecar.cascade.answer_text import FEATURE_NAMES, N_FEATURES, read_answer
from sidecar.config.files import write_atomically
from sidecar.core.request import bound_routing_text
from sidecar.errors import ConfigError, IndexLoadError
from sidecar.semantic.softmax_regression import SoftmaxModel, cross_validated_fit

EmbedText = Literal["none", "prompt", "answer"]
SCORER_FORMAT = "cascade-scorer/1"
L2_GRID = (1.0, 0.3, 0.1, 0.03, 0.01)
"""Stronger than the route heads' grid: a few hundred rows, two classes."""
MIN_ROWS = 20  # per class, for a 5-fold cross-validation to mean anything
CORRECT = 1  # class index of "the answer is correct"


@dataclass(frozen=True)
class LearnedScorer:
    """A fitted scorer: `probability` is P(correct) of one (prompt, answer) pair."""

    embed_text: EmbedText
    embedder_fingerprint: str | None  # None when nothing is embedded
    feature_mean: npt.NDArray[np.float32]
    feature_scale: npt.NDArray[np.float32]
    model: SoftmaxModel
    l2: float
    out_of_fold_auc: float | None  # cross-validated on the training rows

    @property
    def needs_embedding(self) -> bool:
        """Whether `probability` wants an embedding row."""
        return self.embed_text != "none"

    def text_to_embed(self, prompt: str, answer: str) -> str:
        """The text whose embedding this scorer reads ("" when it reads none)."""
        return embedding_text(self.embed_text, prompt, answer)

    def inputs(
        self, prompt: str, answer: str, embedding: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        """One input row: the embedding (if any) followed by the standardised features."""
        features = np.asarray(read_answer(prompt, answer).vector(), dtype=np.float32)
        standard = (features - self.feature_mean) / self.feature_scale
        if not self.needs_embedding:
            return standard
        if embedding is None:
            raise ValueError("this scorer needs an embedding of its text")
        row = np.asarray(embedding, dtype=np.float32).reshape(-1)
        return np.concatenate([row, standard])

    def probability(
        self, prompt: str, answer: str, embedding: npt.NDArray[np.float32] | None = None
    ) -> float:
        """P(the answer is correct); ValueError when the embedding is missing or mis-sized."""
        x = self.inputs(prompt, answer, embedding)
        if x.shape[0] != self.model.weights.shape[0]:
            raise ValueError(f"expected {self.model.weights.shape[0]} inputs, got {x.shape[0]}")
        return float(self.model.probabilities(x.reshape(1, -1))[0, CORRECT])

    def save(self, path: Path) -> None:
        """Write the scorer as one .npz, atomically."""
        meta = {
            "format": SCORER_FORMAT,
            "embed_text": self.embed_text,
            "embedder_fingerprint": self.embedder_fingerprint,
            "features": list(FEATURE_NAMES),
            "l2": self.l2,
            "out_of_fold_auc": self.out_of_fold_auc,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.array(json.dumps(meta)),
            weights=self.model.weights,
            bias=self.model.bias,
            feature_mean=self.feature_mean,
            feature_scale=self.feature_scale,
        )
        write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def embedding_text(embed_text: EmbedText, prompt: str, answer: str) -> str:
    """What the scorer embeds: the prompt's routing text, the answer's, or nothing."""
    if embed_text == "prompt":
        return bound_routing_text(prompt)
    if embed_text == "answer":
        return bound_routing_text(answer)
    return ""


def load_scorer(path: Path, *, expected_fingerprint: str | None = None) -> LearnedScorer:
    """Read a scorer file; IndexLoadError when it is broken or from another embedder."""
    try:
        with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            weights = np.asarray(data["weights"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32)
            mean = np.asarray(data["feature_mean"], dtype=np.float32)
            scale = np.asarray(data["feature_scale"], dtype=np.float32)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise IndexLoadError(f"{path}: not a readable cascade scorer: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != SCORER_FORMAT:
        raise IndexLoadError(f"{path}: not a {SCORER_FORMAT} file")
    embed_text = _embed_text(meta.get("embed_text"), path)
    if meta.get("features") != list(FEATURE_NAMES):
        raise IndexLoadError(f"{path}: built with other text features; retrain it")
    fingerprint = meta.get("embedder_fingerprint")
    if embed_text != "none" and expected_fingerprint not in (None, fingerprint):
        raise IndexLoadError(
            f"{path}: built with embedder {fingerprint}, but the router runs "
            f"{expected_fingerprint}; retrain the scorer with this embedder"
        )
    width = weights.shape[0] - N_FEATURES
    if weights.ndim != 2 or weights.shape[1] != 2 or bias.shape != (2,) or width < 0:
        raise IndexLoadError(f"{path}: weights of shape {weights.shape} are not a scorer's")
    shapes_ok = mean.shape == scale.shape == (N_FEATURES,)
    if (embed_text == "none") != (width == 0) or not shapes_ok:
        raise IndexLoadError(f"{path}: its arrays do not match its embed_text {embed_text!r}")
    auc = meta.get("out_of_fold_auc")
    return LearnedScorer(
        embed_text=embed_text,
        embedder_fingerprint=None if fingerprint is None else str(fingerprint),
        feature_mean=mean,
        feature_scale=scale,
        model=SoftmaxModel(weights=weights, bias=bias),
        l2=float(meta.get("l2", math.nan)),
        out_of_fold_auc=None if auc is None else float(auc),
    )


def _embed_text(value: object, path: Path) -> EmbedText:
    for known in get_args(EmbedText):
        if value == known:
            embed_text: EmbedText = known
            return embed_text
    raise IndexLoadError(f"{path}: unknown embed_text {value!r}")


@dataclass(frozen=True)
class TrainedScorer:
    """A scorer and its evidence: each training row's out-of-fold P(correct)."""

    scorer: LearnedScorer
    out_of_fold: npt.NDArray[np.float64]


def train_scorer(
    prompts: Sequence[str],
    answers: Sequence[str],
    correct: Sequence[bool],
    *,
    embeddings: npt.NDArray[np.float32] | None = None,
    embed_text: EmbedText = "none",
    embedder_fingerprint: str | None = None,
    l2_grid: Sequence[float] = L2_GRID,
) -> TrainedScorer:
    """Fit P(correct) on labelled answers; `embeddings` are rows of `embedding_text` texts."""
    n = len(prompts)
    if len(answers) != n or len(correct) != n:
        raise ConfigError("prompts, answers and labels differ in length")
    labels = np.array([CORRECT if c else 1 - CORRECT for c in correct], dtype=np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_ROWS:
        raise ConfigError(
            f"a scorer needs at least {MIN_ROWS} correct and {MIN_ROWS} wrong answers, "
            f"got {counts[CORRECT]} and {counts[1 - CORRECT]}"
        )
    if (embed_text == "none") != (embeddings is None):
        raise ConfigError("embeddings must be given exactly when embed_text is not 'none'")
    if embed_text != "none" and embedder_fingerprint is None:
        raise ConfigError("an embedding scorer must record its embedder's fingerprint")
    features = np.array(
        [read_answer(p, a).vector() for p, a in zip(prompts, answers, strict=True)],
        dtype=np.float64,
    )
    mean = features.mean(axis=0)
    # Divided by sqrt(width): the block then weighs like one unit-length embedding row.
    scale = (features.std(axis=0) + 1e-6) * math.sqrt(N_FEATURES)
    x = ((features - mean) / scale).astype(np.float32)
    if embeddings is not None:
        if embeddings.shape[0] != n:
            raise ConfigError(f"{embeddings.shape[0]} embedding rows for {n} answers")
        x = np.hstack([np.asarray(embeddings, dtype=np.float32), x])
    fit = cross_validated_fit(x, labels, 2, l2_grid=l2_grid)
    out_of_fold = fit.out_of_fold[:, CORRECT].astype(np.float64)
    scorer = LearnedScorer(
        embed_text=embed_text,
        embedder_fingerprint=embedder_fingerprint if embed_text != "none" else None,
        feature_mean=mean.astype(np.float32),
        feature_scale=scale.astype(np.float32),
        model=fit.model,
        l2=fit.l2,
        out_of_fold_auc=roc_auc(out_of_fold, labels == CORRECT),
    )
    return TrainedScorer(scorer=scorer, out_of_fold=out_of_fold)


def roc_auc(
    scores: Sequence[float] | npt.NDArray[np.float64],
    positive: Sequence[bool] | npt.NDArray[np.bool_],
) -> float:
    """Area under the ROC curve: P(a positive outranks a negative), ties counting half."""
    score = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(is_positive.sum()), int((~is_positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("ROC AUC needs both positive and negative rows")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # Mid-ranks: every member of a block of equal scores gets the block's mean rank.
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    ends = np.r_[starts[1:], len(score)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def threshold_for_escalation(
    out_of_fold: Sequence[float] | npt.NDArray[np.float64], share: float
) -> float:
    """The P(correct) threshold under which `share` of the training answers fall."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"an escalation share must be within [0, 1], got {share}")
    return float(np.quantile(np.asarray(out_of_fold, dtype=np.float64), share))

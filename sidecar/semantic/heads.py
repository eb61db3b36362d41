"""The index's linear heads: route probabilities from a static and from an encoder embedding.

Theory. A kNN vote needs the encoder's embedding and k stored neighbours; a linear
softmax head needs only a dot product per route, and on CLINC150 it is also the more
accurate of the two (docs/EVALUATION.md). An index built with heads carries two:

- *stage 1* over static token embeddings (`sidecar.semantic.static_embedder`): cheap
  enough to run on every prompt before the encoder is even queued;
- *stage 2* over the encoder's embedding, beside the kNN vote.

Both have one class per route, out-of-scope exemplars (`"route": null`) included as a
class of their own, and are fitted with exemplar weights as sample weights
(`sidecar.semantic.softmax_regression`, penalty chosen by cross-validation). The
out-of-fold probabilities of that cross-validation travel with the heads: they are the
calibration set on which `calibrate` chooses the stage-1 gate and the head's threshold.

Stage 1 is tied to the static table it was trained on: the heads record its fingerprint
and an index is refused by a sidecar whose table differs. On disk the heads are
`heads.npz` in the index directory, beside `index.faiss` and `meta.json`; the
out-of-fold evidence is read only by those who ask for it (calibration), so a serving
sidecar does not hold it in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.softmax_regression import CrossValidated, SoftmaxModel, cross_validated_fit
from sidecar.semantic.stored import as_float, as_list

HEADS_FILE = "heads.npz"
MIN_EXEMPLARS = 10  # fewer cannot be cross-validated into anything meaningful
SCORE_FLOOR = 1e-4  # routes less probable than this are left out of a verdict's scores


@dataclass(frozen=True)
class HeadFit:
    """How a head's penalty was chosen, for reports."""

    l2: float
    folds: int
    log_loss: float


@dataclass(frozen=True)
class RouteHeads:
    """Softmax heads over the index's routes (OUT_OF_SCOPE is a route like any other)."""

    classes: tuple[str, ...]
    stage2: SoftmaxModel
    stage2_fit: HeadFit
    stage1: SoftmaxModel | None = None
    stage1_fit: HeadFit | None = None
    static_fingerprint: str | None = None
    route_tokens: tuple[float | None, ...] = ()  # weighted mean known output length per class
    # Out-of-fold probabilities, one row per exemplar in index order (None: not loaded).
    stage1_out_of_fold: npt.NDArray[np.float32] | None = None
    stage2_out_of_fold: npt.NDArray[np.float32] | None = None

    def stage1_probabilities(self, row: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities of one static embedding row."""
        if self.stage1 is None:
            raise ValueError("these heads have no stage-1 head")
        probabilities: npt.NDArray[np.float32] = self.stage1.probabilities(row.reshape(1, -1))[0]
        return probabilities

    def stage2_probabilities(self, row: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities of one encoder embedding row."""
        probabilities: npt.NDArray[np.float32] = self.stage2.probabilities(row.reshape(1, -1))[0]
        return probabilities

    def scores(self, probabilities: npt.NDArray[np.float32]) -> dict[str, float]:
        """Probabilities by route name, leaving out routes under SCORE_FLOOR."""
        keep = np.flatnonzero(probabilities >= SCORE_FLOOR)
        values = probabilities[keep].tolist()
        return {self.classes[int(i)]: float(v) for i, v in zip(keep, values, strict=True)}

    def tokens_for(self, route: str) -> float | None:
        """The mean known output length of a route's exemplars (None if unknown)."""
        if not self.route_tokens:
            return None
        return self.route_tokens[self.classes.index(route)]

    def meta(self) -> dict[str, object]:
        """What meta.json records about the heads (the arrays live in heads.npz)."""
        fits: dict[str, object] = {"stage2": _fit_meta(self.stage2_fit)}
        if self.stage1_fit is not None:
            fits["stage1"] = _fit_meta(self.stage1_fit)
        return {
            "file": HEADS_FILE,
            "classes": list(self.classes),
            "static_fingerprint": self.static_fingerprint,
            "route_tokens": list(self.route_tokens),
            "fits": fits,
        }

    def save(self, directory: Path) -> None:
        """Write heads.npz into `directory` (a temp directory the index is swapped from)."""
        arrays = {"w2": self.stage2.weights, "b2": self.stage2.bias}
        if self.stage1 is not None:
            arrays |= {"w1": self.stage1.weights, "b1": self.stage1.bias}
        if self.stage2_out_of_fold is not None:
            arrays["oof2"] = self.stage2_out_of_fold.astype(np.float16)
        if self.stage1_out_of_fold is not None:
            arrays["oof1"] = self.stage1_out_of_fold.astype(np.float16)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        (directory / HEADS_FILE).write_bytes(buffer.getvalue())


def load_heads(directory: Path, meta: Mapping[str, object], *, evidence: bool) -> RouteHeads:
    """Read heads.npz as meta.json describes it; ValueError/KeyError/OSError when broken."""
    classes = tuple(str(c) for c in as_list(meta["classes"]))
    tokens = tuple(None if t is None else as_float(t) for t in as_list(meta["route_tokens"]))
    fits = meta["fits"]
    if not isinstance(fits, dict):
        raise TypeError("heads.fits must be an object")
    static = meta.get("static_fingerprint")
    # An open file, not a path: np.load leaks its own handle when the zip is broken.
    with (directory / HEADS_FILE).open("rb") as file, np.load(file, allow_pickle=False) as data:
        stage2 = SoftmaxModel(weights=data["w2"], bias=data["b2"])
        stage1 = SoftmaxModel(weights=data["w1"], bias=data["b1"]) if "w1" in data else None
        oof1 = np.asarray(data["oof1"], np.float32) if evidence and "oof1" in data else None
        oof2 = np.asarray(data["oof2"], np.float32) if evidence and "oof2" in data else None
    for model in (stage1, stage2):
        if model is not None and model.weights.shape[1] != len(classes):
            raise ValueError("a head's width differs from the number of classes")
    if (stage1 is None) != (static is None):
        raise ValueError("a stage-1 head needs its static table's fingerprint and vice versa")
    return RouteHeads(
        classes=classes,
        stage2=stage2,
        stage2_fit=_fit_from(fits["stage2"]),
        stage1=stage1,
        stage1_fit=_fit_from(fits["stage1"]) if stage1 is not None else None,
        static_fingerprint=None if static is None else str(static),
        route_tokens=tokens,
        stage1_out_of_fold=oof1,
        stage2_out_of_fold=oof2,
    )


def fit_heads(
    exemplars: Sequence[Exemplar],
    vectors: npt.NDArray[np.float32],
    static_vectors: npt.NDArray[np.float32] | None,
    *,
    static_fingerprint: str | None,
) -> RouteHeads | None:
    """Cross-validate and fit both heads; None when the exemplars cannot support a head."""
    classes = tuple(sorted({e.route for e in exemplars}))
    if len(classes) < 2 or len(exemplars) < MIN_EXEMPLARS:
        return None
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position[e.route] for e in exemplars], dtype=np.int64)
    weights = np.array([e.weight for e in exemplars], dtype=np.float64)
    stage2 = cross_validated_fit(vectors, labels, len(classes), sample_weight=weights)
    stage1 = None
    if static_vectors is not None:
        stage1 = cross_validated_fit(static_vectors, labels, len(classes), sample_weight=weights)
    return RouteHeads(
        classes=classes,
        stage2=stage2.model,
        stage2_fit=_fit_of(stage2),
        stage1=None if stage1 is None else stage1.model,
        stage1_fit=None if stage1 is None else _fit_of(stage1),
        static_fingerprint=static_fingerprint if stage1 is not None else None,
        route_tokens=_route_tokens(exemplars, classes),
        stage1_out_of_fold=None if stage1 is None else stage1.out_of_fold,
        stage2_out_of_fold=stage2.out_of_fold,
    )


def _route_tokens(
    exemplars: Sequence[Exemplar], classes: Sequence[str]
) -> tuple[float | None, ...]:
    total = dict.fromkeys(classes, 0.0)
    weight = dict.fromkeys(classes, 0.0)
    for e in exemplars:
        if e.output_tokens is not None:
            total[e.route] += e.weight * e.output_tokens
            weight[e.route] += e.weight
    return tuple(total[c] / weight[c] if weight[c] > 0 else None for c in classes)


def _fit_of(cv: CrossValidated) -> HeadFit:
    return HeadFit(l2=cv.l2, folds=cv.folds, log_loss=cv.log_loss)


def _fit_meta(fit: HeadFit) -> dict[str, object]:
    return {"l2": fit.l2, "folds": fit.folds, "log_loss": round(fit.log_loss, 6)}


def _fit_from(raw: object) -> HeadFit:
    if not isinstance(raw, dict):
        raise TypeError("a head's fit must be an object")
    log_loss = as_float(raw["log_loss"])
    if not math.isfinite(log_loss):
        raise ValueError("a head's log loss is not finite")
    folds = raw["folds"]
    if not isinstance(folds, int) or isinstance(folds, bool):
        raise TypeError("a head's folds must be an integer")
    return HeadFit(l2=as_float(raw["l2"]), folds=folds, log_loss=log_loss)

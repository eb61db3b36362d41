"""Multinomial logistic regression in numpy: the linear heads of the two-stage classifier.

Theory. A head maps an L2-normalised embedding `x` to route probabilities
`softmax(x @ W + b)`. It is fitted by minimising the weighted cross-entropy plus
`l2 / 2 * |W|^2` with L-BFGS (the bias is not penalised); the loss is convex, so the
optimum does not depend on where the search starts, and warm starts only save
iterations. Inputs are multiplied by `FEATURE_SCALE` during the fit and the scale is
folded into the stored weights, so `l2` means the same for every embedder width.

The penalty is the one knob, and it matters (a few hundred exemplars want a strong one,
fifteen thousand a weak one), so it is chosen by K-fold cross-validation on the
exemplars themselves: the value with the lowest out-of-fold log loss wins (a proper
scoring rule, because the heads' probabilities gate decisions, not just their argmax).
The out-of-fold probabilities of the chosen value are kept: they are what `calibrate`
chooses the stage-1 gate and the head's threshold on, without ever touching a test set.

Folds are stratified by class and drawn from a fixed seed, so the same exemplars always
give the same heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FEATURE_SCALE = 8.0
"""Inputs are unit vectors; scaled by 8 a weakly penalised head can still be sharp."""

L2_GRID = (1e-2, 1e-3, 1e-4)
"""Penalties tried, strongest first (each fit warm-starts from the previous one)."""

DEFAULT_FOLDS = 5
_HISTORY = 10  # L-BFGS correction pairs kept

Objective = Callable[[npt.NDArray[np.float64]], tuple[float, npt.NDArray[np.float64]]]


@dataclass(frozen=True)
class SoftmaxModel:
    """`softmax(x @ weights + bias)` over `n_classes` classes; x is an embedder row."""

    weights: npt.NDArray[np.float32]  # (dim, classes), FEATURE_SCALE folded in
    bias: npt.NDArray[np.float32]  # (classes,)

    def probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities for each row of `x` (shape (n, dim) -> (n, classes))."""
        return softmax(x @ self.weights + self.bias)


@dataclass(frozen=True)
class CrossValidated:
    """A head fitted on every exemplar, and the evidence of how well it generalises."""

    model: SoftmaxModel
    l2: float
    folds: int
    out_of_fold: npt.NDArray[np.float32]  # (n, classes): each row from a head that never saw it
    log_loss: float  # out-of-fold, at the chosen l2


def softmax(z: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Row-wise softmax, stable for any scale."""
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def fit_softmax(
    x: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    *,
    l2: float,
    sample_weight: npt.NDArray[np.float64] | None = None,
    start: SoftmaxModel | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> SoftmaxModel:
    """Fit `softmax(x W + b)` to integer labels by L-BFGS; rows of x are embedder rows."""
    n, dim = x.shape
    if n == 0:
        raise ValueError("cannot fit a head on no rows")
    features = np.ascontiguousarray(x, dtype=np.float32) * np.float32(FEATURE_SCALE)
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), labels] = 1.0
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = (w / w.sum()).astype(np.float32)

    def loss_and_gradient(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        weights = theta[: dim * n_classes].reshape(dim, n_classes).astype(np.float32)
        bias = theta[dim * n_classes :].astype(np.float32)
        z = features @ weights + bias
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        loss = float(np.dot(w, log_norm - (z * onehot).sum(axis=1)))
        loss += 0.5 * l2 * float(np.sum(weights.astype(np.float64) ** 2))
        residual = (np.exp(z - log_norm[:, None]) - onehot) * w[:, None]
        grad_w = features.T @ residual + np.float32(l2) * weights
        return loss, np.concatenate([grad_w.ravel(), residual.sum(axis=0)]).astype(np.float64)

    theta = np.zeros(dim * n_classes + n_classes)
    if start is not None:
        theta[: dim * n_classes] = (start.weights / FEATURE_SCALE).ravel()
        theta[dim * n_classes :] = start.bias
    theta = _lbfgs(loss_and_gradient, theta, max_iter=max_iter, tol=tol)
    weights = theta[: dim * n_classes].reshape(dim, n_classes) * FEATURE_SCALE
    return SoftmaxModel(
        weights=np.ascontiguousarray(weights, dtype=np.float32),
        bias=np.asarray(theta[dim * n_classes :], dtype=np.float32),
    )


def stratified_folds(
    labels: npt.NDArray[np.int64], folds: int, seed: int = 0
) -> npt.NDArray[np.int64]:
    """A fold number per row: each class dealt round-robin over the folds in a seeded order."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # small classes do not all start in fold 0
    return assignment


def cross_validated_fit(
    x: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    *,
    sample_weight: npt.NDArray[np.float64] | None = None,
    l2_grid: Sequence[float] = L2_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> CrossValidated:
    """Choose l2 by K-fold out-of-fold log loss, then fit on every row at that l2."""
    n = len(labels)
    folds = max(2, min(folds, n))
    fold_of = stratified_folds(labels, folds, seed)
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    best: tuple[float, float, npt.NDArray[np.float32]] | None = None
    warm: dict[int, SoftmaxModel] = {}
    for l2 in l2_grid:
        oof = np.zeros((n, n_classes), dtype=np.float32)
        for f in range(folds):
            train, held = fold_of != f, fold_of == f
            if not held.any() or not train.any():
                continue
            warm[f] = fit_softmax(
                x[train], labels[train], n_classes, l2=l2, sample_weight=w[train], start=warm.get(f)
            )
            oof[held] = warm[f].probabilities(x[held])
        picked = np.maximum(oof[np.arange(n), labels].astype(np.float64), 1e-12)
        loss = float(np.dot(w, -np.log(picked)) / w.sum())
        if best is None or loss < best[1] - 1e-9:
            best = (l2, loss, oof)
    assert best is not None  # l2_grid is never empty
    l2, loss, oof = best
    model = fit_softmax(x, labels, n_classes, l2=l2, sample_weight=w, start=warm.get(0))
    return CrossValidated(model=model, l2=l2, folds=folds, out_of_fold=oof, log_loss=loss)


def _lbfgs(
    objective: Objective,
    theta: npt.NDArray[np.float64],
    *,
    max_iter: int,
    tol: float,
) -> npt.NDArray[np.float64]:
    """Minimise a smooth convex function given as (loss, gradient) = objective(theta)."""
    loss, grad = objective(theta)
    steps: list[npt.NDArray[np.float64]] = []
    changes: list[npt.NDArray[np.float64]] = []
    for _ in range(max_iter):
        direction = _two_loop(grad, steps, changes)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from -grad
            steps.clear()
            changes.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0 if steps else 1.0 / max(1e-12, math.sqrt(-slope))
        while True:
            candidate = theta + step * direction
            new_loss, new_grad = objective(candidate)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, y = candidate - theta, new_grad - grad
        if float(s @ y) > 1e-12:
            steps.append(s)
            changes.append(y)
            if len(steps) > _HISTORY:
                steps.pop(0)
                changes.pop(0)
        converged = abs(loss - new_loss) <= tol * max(1.0, abs(loss))
        theta, loss, grad = candidate, new_loss, new_grad
        if converged:
            break
    return theta


def _two_loop(
    grad: npt.NDArray[np.float64],
    steps: list[npt.NDArray[np.float64]],
    changes: list[npt.NDArray[np.float64]],
) -> npt.NDArray[np.float64]:
    """The L-BFGS search direction: -H grad from the stored correction pairs."""
    q = grad.copy()
    history = []
    for s, y in zip(reversed(steps), reversed(changes), strict=True):
        rho = 1.0 / float(y @ s)
        alpha = rho * float(s @ q)
        q -= alpha * y
        history.append((rho, alpha, s, y))
    if steps:
        q *= float(steps[-1] @ changes[-1]) / float(changes[-1] @ changes[-1])
    for rho, alpha, s, y in reversed(history):
        beta = rho * float(y @ q)
        q += s * (alpha - beta)
    return -q

"""The numpy softmax regression behind the linear heads: fit, folds, cross-validation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.semantic.softmax_regression import (
    cross_validated_fit,
    fit_softmax,
    softmax,
    stratified_folds,
)


def _blobs(
    per_class: int = 30, classes: int = 3, dim: int = 8, spread: float = 0.3, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x = np.concatenate([c + spread * rng.normal(size=(per_class, dim)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(classes), per_class).astype(np.int64)


def test_softmax_rows_sum_to_one_at_any_scale() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert p.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert p[0, 0] == pytest.approx(1.0) and p[1] == pytest.approx([1 / 3] * 3)


def test_fit_separates_blobs_and_weak_penalty_is_sharper() -> None:
    x, y = _blobs()
    strong = fit_softmax(x, y, 3, l2=1e-1)
    weak = fit_softmax(x, y, 3, l2=1e-4)
    assert (weak.probabilities(x).argmax(axis=1) == y).mean() == 1.0
    assert weak.probabilities(x).max(axis=1).mean() > strong.probabilities(x).max(axis=1).mean()


def test_sample_weights_tip_a_contested_point() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    y = np.array([0, 1])
    heavy_one = fit_softmax(x, y, 2, l2=1e-3, sample_weight=np.array([1.0, 3.0]))
    assert heavy_one.probabilities(x[:1])[0, 1] == pytest.approx(0.75, abs=0.02)


def test_a_warm_start_reaches_the_same_optimum() -> None:
    x, y = _blobs(seed=3)
    cold = fit_softmax(x, y, 3, l2=1e-2, tol=1e-10)
    warm = fit_softmax(x, y, 3, l2=1e-2, start=fit_softmax(x, y, 3, l2=1e-1), tol=1e-10)
    assert np.abs(cold.probabilities(x) - warm.probabilities(x)).max() < 1e-3


def test_folds_are_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(3), [10, 5, 2]).astype(np.int64)
    folds = stratified_folds(y, 5)
    assert (folds == stratified_folds(y, 5)).all()
    for label in range(3):
        counts = np.bincount(folds[y == label], minlength=5)
        assert counts.max() - counts.min() <= 1  # each class spread evenly over the folds


def test_cross_validation_keeps_held_out_rows_unseen_and_picks_a_penalty() -> None:
    x, y = _blobs(per_class=20, spread=1.2, seed=5)
    cv = cross_validated_fit(x, y, 3, folds=4, l2_grid=(1.0, 1e-3))
    assert cv.l2 in (1.0, 1e-3) and cv.folds == 4
    assert cv.out_of_fold.shape == (60, 3)
    assert cv.out_of_fold.sum(axis=1) == pytest.approx(np.ones(60), abs=1e-5)
    # Out-of-fold rows come from heads that never saw them: worse than the final fit's.
    own = cv.model.probabilities(x)[np.arange(60), y].mean()
    assert cv.out_of_fold[np.arange(60), y].mean() < own
    picked = np.maximum(cv.out_of_fold[np.arange(60), y], 1e-12)
    assert cv.log_loss == pytest.approx(float(-np.log(picked).mean()), rel=1e-5)

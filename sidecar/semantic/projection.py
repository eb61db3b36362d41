"""A learned linear projection that makes cosine kNN over exemplars more accurate.

Theory. A general-purpose sentence encoder spreads every prompt over directions that
matter for *some* task; for one routing task most of them are noise. Fisher's linear
discriminant (LDA) finds the directions along which the routes' means are far apart
relative to how much prompts of one route vary: whiten the pooled within-route
covariance, then keep the principal axes of the whitened route means. At most
`routes - 1` such axes exist. Exemplars and queries are both mapped through
`y = (x - mean) @ A` and re-normalised, so the index still compares cosines, only in a
space where neighbours agree on routes more often (on CLINC150, MiniLM kNN in-scope
accuracy goes from 0.91 to 0.94; see docs/EVALUATION.md).

The within-route covariance is shrunk towards a multiple of the identity (Ledoit-Wolf
style, fixed weight) because a 384-dim covariance from a few thousand prompts is noisy.
Out-of-scope exemplars are projected like any other but do not shape the projection:
there is no "out-of-scope direction" to learn from a handful of unrelated prompts.

The projection is stored inside the FAISS file as a pre-transform chain (linear map,
then L2 normalisation), so searching the index takes raw embedder rows unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError

SHRINKAGE = 0.1
MIN_ROUTES = 9  # below this LDA keeps fewer than 8 axes: too few for a useful cosine


@dataclass(frozen=True)
class LinearProjection:
    """`y = normalise((x - mean) @ matrix)`: a (dim, out_dim) map learnt from exemplars."""

    mean: npt.NDArray[np.float32]
    matrix: npt.NDArray[np.float32]

    @property
    def out_dim(self) -> int:
        """Width of the projected vectors."""
        return int(self.matrix.shape[1])

    def wrap(self, inner: faiss.Index) -> faiss.Index:
        """An index that projects and normalises incoming vectors before `inner` sees them."""
        dim = int(self.matrix.shape[0])
        linear = faiss.LinearTransform(dim, self.out_dim, True)
        a = np.ascontiguousarray(self.matrix.T, dtype=np.float32)  # FAISS computes A @ x + b
        faiss.copy_array_to_vector(a.ravel(), linear.A)
        faiss.copy_array_to_vector((-(self.mean @ self.matrix)).astype(np.float32), linear.b)
        linear.is_trained = True
        wrapped = faiss.IndexPreTransform(faiss.NormalizationTransform(self.out_dim, 2.0), inner)
        wrapped.prepend_transform(linear)
        return wrapped


def fit_lda(
    vectors: npt.NDArray[np.float32], routes: Sequence[str], *, shrinkage: float = SHRINKAGE
) -> LinearProjection:
    """Fisher LDA over the in-scope routes, keeping min(routes - 1, dim) axes."""
    names = sorted({r for r in routes if r != OUT_OF_SCOPE})
    if len(names) < MIN_ROUTES:
        raise ConfigError(
            f"the lda projection needs at least {MIN_ROUTES} routes, the exemplars have "
            f"{len(names)}; build the index with --projection none"
        )
    position = {name: i for i, name in enumerate(names)}
    keep = np.array([r != OUT_OF_SCOPE for r in routes])
    x = np.asarray(vectors, dtype=np.float64)[keep]
    labels = np.array([position[r] for r in routes if r != OUT_OF_SCOPE])
    counts = np.bincount(labels, minlength=len(names)).astype(np.float64)
    means = np.zeros((len(names), x.shape[1]))
    np.add.at(means, labels, x)
    means /= counts[:, None]
    grand = x.mean(axis=0)

    residual = x - means[labels]
    within = residual.T @ residual / len(x)
    scale = np.trace(within) / within.shape[0]
    within = (1.0 - shrinkage) * within + shrinkage * scale * np.eye(within.shape[0])
    eigval, eigvec = np.linalg.eigh(within)
    whiten = (eigvec / np.sqrt(np.maximum(eigval, 1e-12))) @ eigvec.T

    centred = (means - grand) @ whiten
    between = centred.T @ centred / len(names)
    b_val, b_vec = np.linalg.eigh(between)
    out_dim = min(len(names) - 1, x.shape[1])
    axes = b_vec[:, np.argsort(b_val)[::-1][:out_dim]]
    return LinearProjection(
        mean=grand.astype(np.float32), matrix=(whiten @ axes).astype(np.float32)
    )

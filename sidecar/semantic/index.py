"""The exemplar index: labelled prompts embedded once, searched by cosine similarity.

Theory. Exemplars are embedded with one `Embedder` into L2-normalised rows, so the inner
product FAISS computes is the cosine similarity. Below `hnsw_threshold` exemplars an exact
flat index is both fast enough (a 15k x 384 scan is well under a millisecond) and free of
recall loss; above it an HNSW graph trades a little recall for sub-linear search. Beside the
vectors the index keeps, per exemplar, only what the vote needs: route, known output
length and weight. Exemplar texts are NOT stored unless `store_texts=True`: an index is
often shipped to places where the prompts it was built from should not travel, and the
vote never needs them (only `explain` output would show them).

With `projection="lda"` the index also carries a learned linear map (sidecar/semantic/projection.py)
inside the FAISS file; similarities are then cosines in the projected space, so thresholds
calibrated for one index do not carry over to another.

An index may also carry linear softmax heads over its routes (sidecar/semantic/heads.py):
stage 1 over static token embeddings, stage 2 over the embedder's rows. They are fitted
by `build_index` when there are enough exemplars, with cross-validation on the exemplars.

On disk an index is a directory with `index.faiss`, `meta.json` and, from format 2 on,
`heads.npz` when it has heads. `save` writes a sibling temp directory and renames it
into place, so a reader (a sidecar watching the path) sees the old index, then the new
one, never half of one. `load` refuses an index whose embedder fingerprint differs from
the running embedder's (its neighbours would be silently wrong), and one whose stage-1
head was trained on a different static table than the running one. Format 1 indexes
(no heads) still load; they decide everything on the embedder and shed under overload.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from sidecar.config.files import replace_directory
from sidecar.core.vote import Neighbour
from sidecar.errors import ConfigError, IndexLoadError, OutputError
from sidecar.semantic.corpus import embed_corpus
from sidecar.semantic.embedder import Embedder
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.heads import RouteHeads, fit_heads, load_heads
from sidecar.semantic.options import IndexKind, Projection
from sidecar.semantic.projection import fit_lda
from sidecar.semantic.static_embedder import StaticEmbedder
from sidecar.semantic.stored import as_float, as_int, as_list

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before heads
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


class ExemplarIndex:
    """FAISS vectors plus per-exemplar route, output length and weight."""

    def __init__(
        self,
        faiss_index: faiss.Index,
        routes: Sequence[str],
        output_tokens: Sequence[int | None],
        weights: Sequence[float],
        *,
        fingerprint: str,
        kind: Literal["flat", "hnsw"],
        projection: Projection = "none",
        texts: Sequence[str] | None = None,
        created_at: str | None = None,
        heads: RouteHeads | None = None,
    ) -> None:
        n = int(faiss_index.ntotal)
        if not len(routes) == len(output_tokens) == len(weights) == n:
            raise ValueError("index vectors and metadata lengths differ")
        if texts is not None and len(texts) != n:
            raise ValueError("texts must match the number of vectors")
        self._index = faiss_index
        self.routes = tuple(routes)
        self.output_tokens = tuple(output_tokens)
        self.weights = tuple(weights)
        self.texts = None if texts is None else tuple(texts)
        self.fingerprint = fingerprint
        self.kind = kind
        self.projection = projection
        self.dim = int(faiss_index.d)
        self.created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")
        if heads is not None and heads.stage2.weights.shape[0] != self.dim:
            raise ValueError("the stage-2 head's width differs from the embedder's")
        self.heads = heads

    def __len__(self) -> int:
        return len(self.routes)

    def route_counts(self) -> dict[str, int]:
        """Number of exemplars per route (OUT_OF_SCOPE included)."""
        return dict(sorted(Counter(self.routes).items()))

    def search(self, vectors: npt.NDArray[np.float32], k: int) -> list[tuple[Neighbour, ...]]:
        """The k nearest exemplars of each row of `vectors` (embedder rows), closest first."""
        query = np.ascontiguousarray(vectors, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"expected query shape (n, {self.dim}), got {query.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        sims, ids = self._index.search(query, k)
        return [self._neighbours(row_s, row_i) for row_s, row_i in zip(sims, ids, strict=True)]

    def self_neighbours(self, k: int) -> list[tuple[Neighbour, ...]]:
        """Leave-one-out: each exemplar's k nearest *other* exemplars, in exemplar order."""
        inner = self._inner()
        stored = np.asarray(inner.reconstruct_n(0, len(self)), dtype=np.float32)
        sims, ids = inner.search(stored, min(k + 1, len(self)))
        result = []
        for own, (row_s, row_i) in enumerate(zip(sims, ids, strict=True)):
            # Drop the exemplar itself; if an exact duplicate outranked it, drop the tail.
            drop = np.flatnonzero(row_i == own)
            cut = int(drop[0]) if len(drop) else len(row_i) - 1
            keep = [j for j in range(len(row_i)) if j != cut][:k]
            result.append(self._neighbours(row_s[keep], row_i[keep]))
        return result

    def _neighbours(
        self, sims: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]
    ) -> tuple[Neighbour, ...]:
        return tuple(
            Neighbour(
                route=self.routes[i],
                similarity=float(s),
                output_tokens=self.output_tokens[i],
                weight=self.weights[i],
            )
            for s, i in zip(sims, ids, strict=True)
            if i >= 0  # FAISS pads with -1 when fewer than k exemplars exist
        )

    def _inner(self) -> faiss.Index:
        """The index that holds the (projected) vectors, without the pre-transform."""
        index = faiss.downcast_index(self._index)
        if isinstance(index, faiss.IndexPreTransform):
            return faiss.downcast_index(index.index)
        return index

    def save(self, directory: Path) -> None:
        """Write index.faiss + meta.json so that readers see the old or the new index, whole."""

        def fill(tmp: Path) -> None:
            try:
                faiss.write_index(self._index, str(tmp / INDEX_FILE))
            except RuntimeError as exc:  # FAISS reports every write failure as RuntimeError
                raise OutputError(f"{directory}: cannot write {INDEX_FILE}: {exc}") from exc
            if self.heads is not None:
                self.heads.save(tmp)
            (tmp / META_FILE).write_text(json.dumps(self._meta()), encoding="utf-8")

        replace_directory(Path(directory), fill)

    def _meta(self) -> dict[str, object]:
        route_names = sorted(set(self.routes))
        position = {name: i for i, name in enumerate(route_names)}
        meta: dict[str, object] = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "kind": self.kind,
            "projection": self.projection,
            "count": len(self),
            "created_at": self.created_at,
            "route_counts": self.route_counts(),
            "route_names": route_names,
            "route_ids": [position[r] for r in self.routes],
            "output_tokens": list(self.output_tokens),
            "weights": list(self.weights),
        }
        if self.texts is not None:
            meta["texts"] = list(self.texts)
        if self.heads is not None:
            meta["heads"] = self.heads.meta()
        return meta

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        expected_fingerprint: str | None,
        expected_static: str | None = None,
        evidence: bool = False,
    ) -> ExemplarIndex:
        """Read an index saved by `save`; IndexLoadError says what is missing or wrong.

        `expected_static` is the running static table's fingerprint (None: no stage 1
        runs, so a stage-1 head is not checked); `evidence` also reads the heads'
        out-of-fold probabilities (for calibration).
        """
        directory = Path(directory)
        meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
        for path in (meta_path, index_path):
            if not path.is_file():
                raise IndexLoadError(f"exemplar index {directory}: {path.name} is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexLoadError(f"exemplar index {meta_path}: unreadable: {exc}") from exc
        if not isinstance(meta, dict):
            raise IndexLoadError(f"exemplar index {meta_path}: not a JSON object")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise IndexLoadError(
                f"exemplar index {directory}: format version {version!r}, this router reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild it with "
                "`inference-router index build`"
            )
        fingerprint = meta.get("fingerprint")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise IndexLoadError(
                f"exemplar index {directory} was built with embedder {fingerprint}, but the "
                f"running embedder is {expected_fingerprint}; rebuild the index with this "
                "embedder"
            )
        try:
            faiss_index = faiss.read_index(str(index_path))
        except RuntimeError as exc:  # FAISS reports every read failure as RuntimeError
            raise IndexLoadError(f"exemplar index {index_path}: corrupt: {exc}") from exc
        heads = None
        if isinstance(meta.get("heads"), dict):
            try:
                heads = load_heads(directory, meta["heads"], evidence=evidence)
            except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
                raise IndexLoadError(f"exemplar index {directory}: broken heads: {exc!r}") from exc
            trained_on = heads.static_fingerprint
            if expected_static is not None and trained_on not in (None, expected_static):
                raise IndexLoadError(
                    f"exemplar index {directory}: its stage-1 head was trained on static table "
                    f"{trained_on}, but the running table is {expected_static}; rebuild the "
                    "index with this embedder's table"
                )
        try:
            return _from_meta(faiss_index, meta, heads)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise IndexLoadError(
                f"exemplar index {directory}: meta.json does not match index.faiss: {exc!r}"
            ) from exc


def _from_meta(
    faiss_index: faiss.Index, meta: dict[str, object], heads: RouteHeads | None
) -> ExemplarIndex:
    names = [str(n) for n in as_list(meta["route_names"])]
    routes = [names[as_int(i)] for i in as_list(meta["route_ids"])]
    tokens = [None if t is None else as_int(t) for t in as_list(meta["output_tokens"])]
    weights = [as_float(w) for w in as_list(meta["weights"])]
    texts = [str(t) for t in as_list(meta["texts"])] if "texts" in meta else None
    kind = meta["kind"]
    if kind not in ("flat", "hnsw"):
        raise ValueError(f"unknown kind {kind!r}")
    raw_projection = meta.get("projection", "none")
    projection: Projection
    if raw_projection == "lda":
        projection = "lda"
    elif raw_projection == "none":
        projection = "none"
    else:
        raise ValueError(f"unknown projection {raw_projection!r}")
    if as_int(meta["dim"]) != faiss_index.d or as_int(meta["count"]) != faiss_index.ntotal:
        raise ValueError("dim or count differs from index.faiss")
    index = ExemplarIndex(
        faiss_index,
        routes,
        tokens,
        weights,
        fingerprint=str(meta["fingerprint"]),
        kind=kind,
        projection=projection,
        texts=texts,
        created_at=str(meta.get("created_at")),
        heads=heads,
    )
    if heads is not None and not set(heads.classes) >= set(routes):
        raise ValueError("the heads do not know every route of the index")
    if kind == "hnsw":  # efSearch is a search-time knob FAISS does not persist
        hnsw: Any = index._inner()
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def build_index_from_vectors(
    vectors: npt.NDArray[np.float32],
    exemplars: Sequence[Exemplar],
    *,
    fingerprint: str,
    kind: IndexKind = "auto",
    hnsw_threshold: int = 50_000,
    projection: Projection = "none",
    store_texts: bool = False,
    heads: RouteHeads | None = None,
) -> ExemplarIndex:
    """Index already-embedded exemplars (row i of `vectors` is exemplar i)."""
    if len(vectors) != len(exemplars):
        raise ValueError("one vector per exemplar is needed")  # our bug, not the operator's
    if not exemplars:
        raise ConfigError("cannot build an index from no exemplars")
    dim = int(vectors.shape[1])
    auto: Literal["flat", "hnsw"] = "hnsw" if len(exemplars) >= hnsw_threshold else "flat"
    chosen: Literal["flat", "hnsw"] = auto if kind == "auto" else kind
    routes = [e.route for e in exemplars]
    lda = fit_lda(vectors, routes) if projection == "lda" else None
    inner_dim = dim if lda is None else lda.out_dim
    if chosen == "flat":
        faiss_index: faiss.Index = faiss.IndexFlatIP(inner_dim)
    else:
        hnsw = faiss.IndexHNSWFlat(inner_dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        faiss_index = hnsw
    if lda is not None:
        faiss_index = lda.wrap(faiss_index)
    faiss_index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return ExemplarIndex(
        faiss_index,
        routes,
        [e.output_tokens for e in exemplars],
        [e.weight for e in exemplars],
        fingerprint=fingerprint,
        kind=chosen,
        projection=projection,
        texts=[e.text for e in exemplars] if store_texts else None,
        heads=heads,
    )


def build_index(
    exemplars: Sequence[Exemplar],
    embedder: Embedder,
    *,
    kind: IndexKind = "auto",
    hnsw_threshold: int = 50_000,
    progress: bool = False,
    projection: Projection = "none",
    store_texts: bool = False,
    batch_size: int = 64,
    heads: bool = True,
    static: StaticEmbedder | None = None,
) -> ExemplarIndex:
    """Embed the exemplars and index them: flat below `hnsw_threshold`, HNSW from it on.

    With `heads` the linear heads are fitted too (stage 1 only when `static` is given).
    """
    texts = [e.text for e in exemplars]
    vectors = embed_corpus(texts, embedder, batch_size=batch_size, progress=progress)
    fitted = None
    if heads and exemplars:
        fitted = fit_heads(
            exemplars,
            vectors,
            None if static is None else static.embed(texts),
            static_fingerprint=None if static is None else static.fingerprint,
        )
    return build_index_from_vectors(
        vectors,
        exemplars,
        fingerprint=embedder.fingerprint,
        kind=kind,
        hnsw_threshold=hnsw_threshold,
        projection=projection,
        store_texts=store_texts,
        heads=fitted,
    )

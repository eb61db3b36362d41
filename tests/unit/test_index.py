"""Building, saving and loading indexes, and the LDA projection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError, IndexLoadError
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.index import (
    META_FILE,
    ExemplarIndex,
    build_index,
    build_index_from_vectors,
)
from tests.fakes import HashEmbedder

EXEMPLARS = [
    Exemplar("hello there", "small", 20),
    Exemplar("thanks a lot", "small", 10),
    Exemplar("prove the riemann hypothesis", "frontier", 900, weight=2.0),
    Exemplar("write a distributed database in rust", "frontier", None),
    Exemplar("what is the weather on mars", OUT_OF_SCOPE),
]


def test_search_finds_the_exemplar_itself_first() -> None:
    embedder = HashEmbedder()
    index = build_index(EXEMPLARS, embedder)
    found = index.search(embedder.embed(["prove the riemann hypothesis"]), 2)[0]
    assert found[0].route == "frontier"
    assert found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert found[0].output_tokens == 900
    assert found[0].weight == 2.0
    assert found[0].similarity >= found[1].similarity


def test_search_returns_fewer_neighbours_than_k_when_the_index_is_small() -> None:
    embedder = HashEmbedder()
    index = build_index(EXEMPLARS[:2], embedder)
    assert len(index.search(embedder.embed(["hello"]), 10)[0]) == 2


def test_search_rejects_a_wrong_width() -> None:
    index = build_index(EXEMPLARS, HashEmbedder())
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, 7), dtype=np.float32), 3)


def test_kind_auto_is_flat_below_the_threshold_and_hnsw_from_it() -> None:
    embedder = HashEmbedder()
    assert build_index(EXEMPLARS, embedder).kind == "flat"
    assert build_index(EXEMPLARS, embedder, hnsw_threshold=len(EXEMPLARS)).kind == "hnsw"
    assert build_index(EXEMPLARS, embedder, kind="hnsw").kind == "hnsw"
    assert build_index(EXEMPLARS, embedder, kind="flat", hnsw_threshold=1).kind == "flat"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_roundtrip(tmp_path: Path, kind: str) -> None:
    embedder = HashEmbedder()
    index = build_index(EXEMPLARS, embedder, kind="flat" if kind == "flat" else "hnsw")
    index.save(tmp_path / "idx")
    loaded = ExemplarIndex.load(tmp_path / "idx", expected_fingerprint=embedder.fingerprint)
    assert loaded.kind == kind
    assert loaded.routes == index.routes
    assert loaded.output_tokens == index.output_tokens
    assert loaded.weights == index.weights
    assert loaded.fingerprint == embedder.fingerprint
    assert loaded.texts is None
    query = embedder.embed(["thanks", "a distributed database"])
    assert loaded.search(query, 3) == index.search(query, 3)
    meta = json.loads((tmp_path / "idx" / META_FILE).read_text())
    assert meta["route_counts"] == {OUT_OF_SCOPE: 1, "frontier": 2, "small": 2}
    assert meta["kind"] == kind
    assert "created_at" in meta and "format_version" in meta
    assert "hello there" not in (tmp_path / "idx" / META_FILE).read_text()


def test_texts_are_stored_only_when_asked(tmp_path: Path) -> None:
    index = build_index(EXEMPLARS, HashEmbedder(), store_texts=True)
    index.save(tmp_path / "idx")
    loaded = ExemplarIndex.load(tmp_path / "idx", expected_fingerprint=None)
    assert loaded.texts == tuple(e.text for e in EXEMPLARS)


def test_save_replaces_an_existing_index_whole(tmp_path: Path) -> None:
    embedder = HashEmbedder()
    build_index(EXEMPLARS[:2], embedder).save(tmp_path / "idx")
    build_index(EXEMPLARS, embedder).save(tmp_path / "idx")
    loaded = ExemplarIndex.load(tmp_path / "idx", expected_fingerprint=embedder.fingerprint)
    assert len(loaded) == len(EXEMPLARS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp dirs left over


def test_fingerprint_mismatch_is_refused_naming_both(tmp_path: Path) -> None:
    build_index(EXEMPLARS, HashEmbedder(32)).save(tmp_path / "idx")
    with pytest.raises(IndexLoadError) as caught:
        ExemplarIndex.load(tmp_path / "idx", expected_fingerprint="other-embedder")
    assert "hash-embedder-32" in str(caught.value)
    assert "other-embedder" in str(caught.value)


def test_missing_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match=r"meta\.json is missing"):
        ExemplarIndex.load(tmp_path / "nowhere", expected_fingerprint=None)


def test_corrupt_faiss_file_is_refused(tmp_path: Path) -> None:
    build_index(EXEMPLARS, HashEmbedder()).save(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"definitely not faiss")
    with pytest.raises(IndexLoadError, match="corrupt"):
        ExemplarIndex.load(tmp_path / "idx", expected_fingerprint=None)


@pytest.mark.parametrize(
    "damage",
    [
        lambda meta: "{truncated",
        lambda meta: json.dumps({**meta, "format_version": 99}),
        lambda meta: json.dumps({**meta, "route_ids": meta["route_ids"][:-1]}),
        lambda meta: json.dumps({**meta, "count": 1}),
        lambda meta: json.dumps({k: v for k, v in meta.items() if k != "weights"}),
        lambda meta: json.dumps([1, 2]),
    ],
)
def test_corrupt_meta_is_refused(tmp_path: Path, damage: object) -> None:
    build_index(EXEMPLARS, HashEmbedder()).save(tmp_path / "idx")
    meta_path = tmp_path / "idx" / META_FILE
    assert callable(damage)
    meta_path.write_text(damage(json.loads(meta_path.read_text())))
    with pytest.raises(IndexLoadError):
        ExemplarIndex.load(tmp_path / "idx", expected_fingerprint=None)


def test_self_neighbours_leave_the_exemplar_out() -> None:
    embedder = HashEmbedder()
    exemplars = [*EXEMPLARS, Exemplar("hello there", "small")]  # an exact duplicate
    index = build_index(exemplars, embedder)
    loo = index.self_neighbours(3)
    assert len(loo) == len(exemplars)
    assert all(len(found) == 3 for found in loo)
    # The duplicate pair sees each other, at similarity 1, exactly once.
    assert [round(nb.similarity, 4) for nb in loo[0]].count(1.0) == 1
    assert [round(nb.similarity, 4) for nb in loo[-1]].count(1.0) == 1


def _clustered(per_route: int, noise_seed: int) -> tuple[npt.NDArray[np.float32], list[str]]:
    """12 routes in 48 dims whose centres differ weakly against strong shared noise."""
    centres = np.random.default_rng(0).normal(size=(12, 48))
    noise = np.random.default_rng(noise_seed).normal(size=(12 * per_route, 48))
    noise[:, :8] *= 6.0  # a few loud directions that carry no route information
    vectors = np.repeat(centres, per_route, axis=0) * 0.5 + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"r{i}" for i in range(12) for _ in range(per_route)]


def test_lda_projection_improves_knn_and_survives_a_roundtrip(tmp_path: Path) -> None:
    vectors, routes = _clustered(per_route=30, noise_seed=1)
    test_vectors, test_routes = _clustered(per_route=10, noise_seed=2)
    exemplars = [Exemplar(f"t{i}", r) for i, r in enumerate(routes)]
    plain = build_index_from_vectors(vectors, exemplars, fingerprint="fp")
    lda = build_index_from_vectors(vectors, exemplars, fingerprint="fp", projection="lda")

    def accuracy(index: ExemplarIndex) -> float:
        found = index.search(test_vectors, 1)
        return float(np.mean([f[0].route == r for f, r in zip(found, test_routes, strict=True)]))

    assert lda.projection == "lda"
    assert accuracy(lda) > accuracy(plain) + 0.1
    lda.save(tmp_path / "idx")
    loaded = ExemplarIndex.load(tmp_path / "idx", expected_fingerprint="fp")
    assert loaded.projection == "lda"
    assert loaded.dim == 48
    assert loaded.search(test_vectors[:5], 4) == lda.search(test_vectors[:5], 4)
    assert len(loaded.self_neighbours(2)) == len(exemplars)


def test_lda_projection_needs_enough_routes() -> None:
    with pytest.raises(ConfigError, match="at least"):
        build_index(EXEMPLARS, HashEmbedder(), projection="lda")

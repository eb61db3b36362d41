"""The sidecar's semantic classifier: caching, and index hot swap under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.semantic.micro_batcher import MicroBatcher
from sidecar.core.vote import ClassifierConfig
from sidecar.errors import IndexLoadError
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.index import ExemplarIndex, build_index
from sidecar.semantic.classifier import SemanticClassifier
from tests.fakes import HashEmbedder

CONFIG = ClassifierConfig(k=3, threshold=0.2, temperature=0.05)
GREETINGS = ["hello there", "hi friend", "good morning", "hey thanks"]
PROOFS = ["prove the theorem", "prove the lemma rigorously", "formal proof of the bound"]


def _index(embedder: HashEmbedder, small_route: str) -> ExemplarIndex:
    rows = [Exemplar(t, small_route, 10) for t in GREETINGS]
    rows += [Exemplar(t, "frontier", 900) for t in PROOFS]
    return build_index(rows, embedder)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SemanticClassifier, HashEmbedder, Path]]:
    embedder = HashEmbedder()
    first = _index(embedder, "small")
    first.save(tmp_path / "a")
    _index(embedder, "tiny").save(tmp_path / "b")
    batcher = MicroBatcher(embedder, max_batch=8, max_wait_s=0.001)
    classifier = SemanticClassifier(
        batcher, first, CONFIG, index_path=tmp_path / "a", cache_size=16
    )
    yield classifier, embedder, tmp_path
    await batcher.close()


async def test_classifies_and_caches_exact_repeats(
    parts: tuple[SemanticClassifier, HashEmbedder, Path],
) -> None:
    classifier, embedder, _ = parts
    first = await classifier.classify("hello there")
    assert first.semantic.route == "small"
    assert first.neighbours[0].route == "small"
    calls = len(embedder.batches)
    again = await classifier.classify("hello there")
    assert again == first
    assert len(embedder.batches) == calls  # the model was skipped
    proof = await classifier.classify("prove the theorem")
    assert proof.semantic.route == "frontier"
    assert proof.semantic.predicted_output_tokens == pytest.approx(900)


async def test_hot_swap_under_load_never_mixes_indexes(
    parts: tuple[SemanticClassifier, HashEmbedder, Path],
) -> None:
    classifier, _, tmp_path = parts
    # Same words, different spacing: distinct cache keys, identical fake embeddings.
    texts = ["hello" + " " * (i + 1) + "there" for i in range(200)]

    async def ask(text: str) -> str | None:
        return (await classifier.classify(text)).semantic.route

    load = [asyncio.create_task(ask(t)) for t in texts]
    await asyncio.sleep(0)
    info = await classifier.reload(str(tmp_path / "b"))
    assert info.exemplars == len(GREETINGS) + len(PROOFS)
    routes = await asyncio.gather(*load)
    # Every decision came from one whole index: the old label or the new one.
    assert set(routes) <= {"small", "tiny"}
    assert (await classifier.classify("hello there")).semantic.route == "tiny"


async def test_corrupt_or_foreign_index_is_refused_and_old_keeps_serving(
    parts: tuple[SemanticClassifier, HashEmbedder, Path],
) -> None:
    classifier, _, tmp_path = parts
    corrupt = tmp_path / "corrupt"
    _index(HashEmbedder(), "tiny").save(corrupt)
    (corrupt / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(IndexLoadError, match="corrupt"):
        await classifier.reload(str(corrupt))
    foreign = tmp_path / "foreign"
    _index(HashEmbedder(dim=16), "tiny").save(foreign)
    with pytest.raises(IndexLoadError, match="embedder"):
        await classifier.reload(str(foreign))
    with pytest.raises(IndexLoadError, match="missing"):
        await classifier.reload(str(tmp_path / "absent"))
    assert (await classifier.classify("good morning")).semantic.route == "small"


class _SlowEmbedder(HashEmbedder):
    """A fake whose every call takes at least 50 ms of wall time."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        time.sleep(0.05)
        return super().embed(texts)


async def test_overload_sheds_to_the_default_instead_of_queueing() -> None:
    embedder = _SlowEmbedder()
    batcher = MicroBatcher(embedder, max_batch=1, max_wait_s=0)
    classifier = SemanticClassifier(
        batcher, _index(embedder, "small"), CONFIG, index_path=None, cache_size=0,
        max_queue_s=0.12,
    )  # fmt: skip
    try:
        await classifier.classify("hello there")  # teaches the batcher the model's cost
        results = await asyncio.gather(*(classifier.classify(f"hi {i}") for i in range(10)))
    finally:
        await batcher.close()
    shed = [r for r in results if r.shed]
    assert 7 <= len(shed) <= 9
    assert all(r.semantic.route is None and "overloaded" in (r.abstain_reason or "") for r in shed)
    assert all(not r.shed and r.neighbours for r in results if r not in shed)

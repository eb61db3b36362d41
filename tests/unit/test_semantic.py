"""The sidecar's semantic classifier: caching, load shedding, and index hot swap under load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.core.vote import SHED, RouteVerdict, VoteConfig, vote
from sidecar.errors import IndexLoadError
from sidecar.semantic.classifier import SemanticClassifier
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.index import ExemplarIndex, build_index
from sidecar.semantic.micro_batcher import MicroBatcher
from tests.fakes import GatedEmbedder, HashEmbedder

CONFIG = VoteConfig(k=3, threshold=0.2, temperature=0.05)
GREETINGS = ["hello there", "hi friend", "good morning", "hey thanks"]
PROOFS = ["prove the theorem", "prove the lemma rigorously", "formal proof of the bound"]
# Long enough that a request never queues behind the shedding budget by accident.
NO_SHEDDING_S = 3600.0


def _index(embedder: HashEmbedder, small_route: str, small_tokens: int = 10) -> ExemplarIndex:
    rows = [Exemplar(t, small_route, small_tokens) for t in GREETINGS]
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
        batcher, first, CONFIG, index_path=tmp_path / "a", cache_size=16, reload_root=tmp_path
    )
    yield classifier, embedder, tmp_path
    await batcher.close()


async def test_classifies_and_caches_exact_repeats(
    parts: tuple[SemanticClassifier, HashEmbedder, Path],
) -> None:
    classifier, embedder, _ = parts
    first = await classifier.classify("hello there")
    assert first.route == "small"
    assert first.neighbours[0].route == "small"
    calls = len(embedder.batches)
    again = await classifier.classify("hello there")
    assert again == first
    assert len(embedder.batches) == calls  # the model was skipped
    proof = await classifier.classify("prove the theorem")
    assert proof.route == "frontier"
    assert proof.predicted_output_tokens == pytest.approx(900)


async def test_hot_swap_under_load_never_mixes_indexes(tmp_path: Path) -> None:
    embedder = GatedEmbedder()
    plain = HashEmbedder()  # same vectors and fingerprint, never held
    old = _index(plain, "small", small_tokens=10)
    # The new index differs in the route AND the predicted length of the same greeting,
    # so an answer that took one from each index would match neither expectation.
    _index(plain, "tiny", small_tokens=40).save(tmp_path / "new")
    new = ExemplarIndex.load(tmp_path / "new", expected_fingerprint=embedder.fingerprint)
    batcher = MicroBatcher(embedder, max_batch=8, max_wait_s=0)
    classifier = SemanticClassifier(
        batcher,
        old,
        CONFIG,
        index_path=None,
        cache_size=16,
        max_queue_s=NO_SHEDDING_S,
        reload_root=tmp_path,
    )
    # Same words, different spacing: distinct cache keys, identical fake embeddings, so
    # every request has the same expected answer from each index.
    texts = ["hello" + " " * (i + 1) + "there" for i in range(40)]
    query = plain.embed(["hello there"])
    from_old = vote(old.search(query, CONFIG.k)[0], CONFIG)
    from_new = vote(new.search(query, CONFIG.k)[0], CONFIG)
    assert (from_old.route, from_new.route) == ("small", "tiny")
    assert from_old.predicted_output_tokens != from_new.predicted_output_tokens

    try:
        load = [asyncio.create_task(classifier.classify(t)) for t in texts]
        embedder.allow(1)  # exactly one batch of 8 may finish before the swap
        await asyncio.wait(load, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert any(task.done() for task in load)
        # The next batch is already inside the model (blocked) when the swap happens.
        assert await asyncio.to_thread(embedder.wait_entered, 2)
        info = await classifier.reload(str(tmp_path / "new"))
        done_before_swap = [task.done() for task in load]
        embedder.open()
        answers: list[RouteVerdict] = await asyncio.gather(*load)
        after = await classifier.classify("hello there")
    finally:
        embedder.open()
        await batcher.close()

    assert info.exemplars == len(GREETINGS) + len(PROOFS)
    # The swap landed while requests were in flight: answers from both indexes.
    assert 1 <= sum(done_before_swap) <= 8
    assert not all(done_before_swap)
    for answer, before in zip(answers, done_before_swap, strict=True):
        # Each answer is exactly one whole index's answer; a request unfinished at the
        # swap reads the index once its embedding is ready, so it sees the new one.
        assert (answer == from_old) != (answer == from_new)
        assert answer == (from_old if before else from_new)
    assert after == from_new


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
    assert (await classifier.classify("good morning")).route == "small"


async def test_reload_reads_only_under_the_reload_root(
    parts: tuple[SemanticClassifier, HashEmbedder, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    classifier, _, root = parts
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "index"
    _index(HashEmbedder(), "tiny").save(elsewhere)
    with pytest.raises(IndexLoadError, match="reloads may only read under"):
        await classifier.reload(str(elsewhere))
    with pytest.raises(IndexLoadError, match="reloads may only read under"):
        await classifier.reload(str(root / ".." / elsewhere.parent.name / "index"))
    assert (await classifier.classify("good morning")).route == "small"
    assert (await classifier.reload(str(root / "b"))).exemplars > 0  # inside: fine


async def test_reload_without_any_path_is_refused(
    parts: tuple[SemanticClassifier, HashEmbedder, Path],
) -> None:
    classifier, embedder, tmp_path = parts
    pathless = SemanticClassifier(
        MicroBatcher(embedder), _index(embedder, "small"), CONFIG, index_path=None, cache_size=0
    )
    with pytest.raises(IndexLoadError, match="no index path"):
        await pathless.reload(None)
    info = await classifier.reload(None)  # the path it was started with
    assert info.path == str(tmp_path / "a")


async def test_overload_sheds_to_the_default_instead_of_queueing() -> None:
    embedder = GatedEmbedder()
    batcher = MicroBatcher(embedder, max_batch=1, max_wait_s=0)
    try:
        # Teach the batcher the model's cost with one call, then read its estimate: with
        # nothing queued, a new text would wait exactly one per-text cost.
        warm_up = asyncio.create_task(batcher.embed("warm up"))
        assert await asyncio.to_thread(embedder.wait_entered, 1)
        embedder.allow(1)
        await warm_up
        per_text_s = batcher.expected_wait_s()
        assert per_text_s > 0
        # A budget of 3.5 texts: the prompt in the model plus two queued behind it fit
        # (waits of 1, 2 and 3 costs); a fourth would wait 4 costs and is shed.
        classifier = SemanticClassifier(
            batcher,
            _index(HashEmbedder(), "small"),
            CONFIG,
            index_path=None,
            cache_size=0,
            max_queue_s=3.5 * per_text_s,
        )
        # The model is held, so no batch finishes and the estimate cannot move meanwhile.
        burst = [asyncio.create_task(classifier.classify(f"hi {i}")) for i in range(10)]
        assert await asyncio.to_thread(embedder.wait_entered, 2)
        shed = [task for task in burst if task.done()]
        assert len(shed) == 7  # decided at once, without waiting for the model
        embedder.open()
        results = await asyncio.gather(*burst)
    finally:
        embedder.open()
        await batcher.close()
    shed_verdicts = [t.result() for t in shed]
    assert all(v.abstain_reason == SHED for v in shed_verdicts)
    assert all(v.route is None and not v.neighbours for v in shed_verdicts)
    admitted = [r for r in results if r.abstain_reason != SHED]
    assert len(admitted) == 3
    assert all(r.neighbours and r.route == "small" for r in admitted)
    assert embedder.batches == [1, 1, 1, 1]  # warm-up plus the admitted three: shed cost nothing

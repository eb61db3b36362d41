"""The micro-batcher: batches form under load, errors reach every waiter, close drains."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.errors import EmbedderError
from sidecar.semantic.micro_batcher import MicroBatcher
from tests.fakes import GatedEmbedder, HashEmbedder


class FailingEmbedder(HashEmbedder):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.failures:
            self.failures -= 1
            raise EmbedderError("model exploded")
        return super().embed(texts)


def expected(texts: list[str]) -> npt.NDArray[np.float32]:
    return HashEmbedder().embed(texts)


async def enqueue(
    batcher: MicroBatcher, texts: list[str]
) -> list[asyncio.Task[npt.NDArray[np.float32]]]:
    tasks = [asyncio.create_task(batcher.embed(t)) for t in texts]
    await asyncio.sleep(0)  # one loop turn: every task runs up to its await, i.e. enqueues
    return tasks


async def test_concurrent_calls_share_one_batch_in_order() -> None:
    embedder = HashEmbedder()
    batcher = MicroBatcher(embedder, max_batch=16)
    texts = [f"prompt number {i}" for i in range(5)]
    rows = await asyncio.gather(*(batcher.embed(t) for t in texts))
    await batcher.close()
    assert embedder.batches == [5]
    np.testing.assert_array_equal(np.stack(rows), expected(texts))


async def test_max_batch_splits_and_later_batches_wait_for_the_worker() -> None:
    embedder = HashEmbedder()
    batcher = MicroBatcher(embedder, max_batch=4, max_wait_s=0.5)
    texts = [f"text {i} words" for i in range(10)]
    rows = await asyncio.gather(*(batcher.embed(t) for t in texts))
    await batcher.close()
    # The first 4 fill a batch at once; the rest pile up behind it and go as soon as it ends.
    assert embedder.batches == [4, 4, 2]
    np.testing.assert_array_equal(np.stack(rows), expected(texts))


async def test_lone_request_is_a_batch_of_one() -> None:
    embedder = HashEmbedder()
    batcher = MicroBatcher(embedder, max_wait_s=0)
    row = await batcher.embed("hello there")
    await batcher.close()
    assert embedder.batches == [1]
    np.testing.assert_array_equal(row, expected(["hello there"])[0])
    assert row.dtype == np.float32 and row.shape == (32,)


async def test_requests_arriving_during_a_batch_go_out_together() -> None:
    embedder = GatedEmbedder()
    batcher = MicroBatcher(embedder, max_wait_s=0)
    first = asyncio.create_task(batcher.embed("first"))
    # The loop stays free while the model runs: this await is served by the loop.
    assert await asyncio.to_thread(embedder.wait_entered, 1)
    later = await enqueue(batcher, ["second", "third", "fourth"])
    embedder.open()
    rows = [await first] + [await t for t in later]
    await batcher.close()
    assert embedder.batches == [1, 3]
    np.testing.assert_array_equal(np.stack(rows), expected(["first", "second", "third", "fourth"]))


async def test_error_reaches_every_waiter_of_the_batch_and_batcher_recovers() -> None:
    embedder = FailingEmbedder(failures=1)
    batcher = MicroBatcher(embedder)
    results = await asyncio.gather(
        *(batcher.embed(t) for t in ["a", "b", "c"]), return_exceptions=True
    )
    assert all(isinstance(r, EmbedderError) and "exploded" in str(r) for r in results)
    row = await batcher.embed("a")
    await batcher.close()
    np.testing.assert_array_equal(row, expected(["a"])[0])


async def test_wrong_row_count_is_an_embedder_error() -> None:
    class ShortEmbedder(HashEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return super().embed(texts)[:-1]

    batcher = MicroBatcher(ShortEmbedder())
    with pytest.raises(EmbedderError, match="returned 1 rows for 2"):
        await asyncio.gather(batcher.embed("x"), batcher.embed("y"))
    await batcher.close()


async def test_cancelled_waiter_is_dropped_and_others_still_answered() -> None:
    embedder = GatedEmbedder()
    batcher = MicroBatcher(embedder, max_wait_s=0)
    first = asyncio.create_task(batcher.embed("first"))
    assert await asyncio.to_thread(embedder.wait_entered, 1)
    gone, kept = await enqueue(batcher, ["gone", "kept"])
    gone.cancel()
    embedder.open()
    await first
    row = await kept
    await batcher.close()
    assert gone.cancelled()
    assert embedder.batches == [1, 1]
    np.testing.assert_array_equal(row, expected(["kept"])[0])


async def test_close_finishes_accepted_requests_then_refuses() -> None:
    embedder = HashEmbedder()
    batcher = MicroBatcher(embedder, max_wait_s=10)  # only close() can flush these
    tasks = await enqueue(batcher, ["one", "two", "three"])
    await batcher.close()
    rows = [t.result() for t in tasks]
    np.testing.assert_array_equal(np.stack(rows), expected(["one", "two", "three"]))
    assert embedder.batches == [3]
    with pytest.raises(EmbedderError, match="closed"):
        await batcher.embed("late")
    await batcher.close()  # idempotent


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(HashEmbedder(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(HashEmbedder(), max_wait_s=-1)

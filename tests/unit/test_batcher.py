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


async def test_a_failed_batch_is_retried_text_by_text_so_only_the_bad_prompt_fails() -> None:
    class PoisonEmbedder(HashEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            if "poison" in texts:
                raise EmbedderError("model exploded on a bad prompt")
            return super().embed(texts)

    embedder = PoisonEmbedder()
    batcher = MicroBatcher(embedder, max_batch=8)
    texts = ["a", "poison", "c", "d"]
    results = await asyncio.gather(*(batcher.embed(t) for t in texts), return_exceptions=True)
    await batcher.close()
    # The batch of 4 and "poison" alone raised; "a", "c" and "d" were retried one by one.
    assert embedder.batches == [1, 1, 1]
    assert isinstance(results[1], EmbedderError)
    good = [r for i, r in enumerate(results) if i != 1 and isinstance(r, np.ndarray)]
    np.testing.assert_array_equal(np.stack(good), expected(["a", "c", "d"]))


async def test_a_transient_failure_costs_no_request_and_the_batcher_recovers() -> None:
    embedder = FailingEmbedder(failures=1)
    batcher = MicroBatcher(embedder)
    rows = await asyncio.gather(*(batcher.embed(t) for t in ["a", "b", "c"]))
    np.testing.assert_array_equal(np.stack(rows), expected(["a", "b", "c"]))
    row = await batcher.embed("a")
    await batcher.close()
    np.testing.assert_array_equal(row, expected(["a"])[0])


async def test_a_failing_lone_text_gets_the_error() -> None:
    batcher = MicroBatcher(FailingEmbedder(failures=1))
    with pytest.raises(EmbedderError, match="exploded"):
        await batcher.embed("a")
    await batcher.close()


async def test_wrong_row_count_is_an_embedder_error() -> None:
    class ShortEmbedder(HashEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return super().embed(texts)[:-1]

    batcher = MicroBatcher(ShortEmbedder())
    with pytest.raises(EmbedderError, match="returned 0 rows for 1"):
        await asyncio.gather(batcher.embed("x"), batcher.embed("y"))
    await batcher.close()


class FakeClock:
    """Time that moves only when the test (or a fake model call) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowOnceEmbedder(GatedEmbedder):
    """A gated embedder whose first call takes `stall_s` of fake time (a SIGSTOP, say)."""

    def __init__(self, clock: FakeClock, stall_s: float) -> None:
        super().__init__()
        self._clock, self._stall_s = clock, stall_s

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows = super().embed(texts)
        self._clock.now += self._stall_s
        self._stall_s = 0.001  # every later call costs a millisecond
        return rows


async def test_one_slow_batch_does_not_switch_the_classifier_off() -> None:
    clock = FakeClock()
    embedder = SlowOnceEmbedder(clock, stall_s=1.0)
    embedder.open()
    batcher = MicroBatcher(embedder, max_wait_s=0, clock=clock)
    await batcher.embed("stalled")
    assert batcher.seconds_per_text() == pytest.approx(1.0)
    # Idle with nothing queued: a new text goes straight in, whatever the estimate says.
    assert not batcher.overloaded(budget_s=0.05)
    # The estimate halves for every idle half-life, so it cannot stay stuck high.
    clock.now += 1.0
    assert batcher.seconds_per_text() == pytest.approx(0.5)
    clock.now += 9.0
    assert batcher.seconds_per_text() < 0.002
    # The next batch starts from the decayed value and measures afresh.
    await batcher.embed("fresh")
    assert batcher.seconds_per_text() < 0.002
    await batcher.close()


async def test_overloaded_only_when_texts_would_queue_past_the_budget() -> None:
    clock = FakeClock()
    embedder = SlowOnceEmbedder(clock, stall_s=0.02)
    batcher = MicroBatcher(embedder, max_batch=1, max_wait_s=0, clock=clock)
    embedder.allow(1)
    await batcher.embed("learn the cost")  # 20 ms per text
    running = asyncio.create_task(batcher.embed("in the model"))
    assert await asyncio.to_thread(embedder.wait_entered, 2)
    # One text in the model: a newcomer would wait 2 x 20 ms.
    assert batcher.expected_wait_s() == pytest.approx(0.04)
    assert not batcher.overloaded(budget_s=0.05)
    queued = await enqueue(batcher, ["queued"])
    assert batcher.overloaded(budget_s=0.05)  # now 3 x 20 ms
    embedder.open()
    await asyncio.gather(running, *queued)
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

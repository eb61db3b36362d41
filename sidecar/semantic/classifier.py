"""Semantic routing in the sidecar: two stages over one exemplar index, with hot index swap.

Two stages (sidecar/semantic/stages.py). Stage 1 embeds the prompt with static token
vectors and asks the index's stage-1 head, on the event loop (tens of microseconds);
a confident answer is final. Otherwise stage 2 embeds it with the sentence encoder
(batched, off the loop) and decides by the kNN vote or the stage-2 head.

Load shedding. The encoder is the one expensive step (6-9 ms of CPU per 30-token prompt
on a 2-core machine), so under overload its queue would grow past Envoy's ext_proc
timeout and every request would fail open. Instead, a prompt whose expected wait for
the model exceeds `max_queue_ms` is decided at once on stage 1 alone (marked
`overloaded`; not cached, so a repeat gets the full decision later), and the model keeps
serving the prompts it admitted at full speed. The server can also say the whole process
is saturated (`shed_when`: too many decision streams open at once), and then stage 1
decides alone too: under a flood the encoder's queue stays short while every decision
waits for the CPU. Without a stage-1 head (an index from before heads, or stage 1
switched off) such a prompt is decided without the classifier: the policy's default
route, abstain reason `shed`.

Theory. The live index is one attribute, replaced by a single reference assignment on the
event loop. A request reads that reference once, after its embedding is ready, and uses
that index object for its search; so every decision is made against exactly one whole
index, the old or the new, never a half-loaded one (stage 1 reads it before the
encoder is asked, stage 2 again after: a decision is made by one stage, so by one
index). A new index is loaded and checked (files present, FAISS readable, metadata
consistent, same embedder fingerprint, same static table) in a
worker thread *before* the swap; if any check fails the old index keeps serving and the
caller gets IndexLoadError. The exact-repeat cache is keyed by the index generation, so
a swap invalidates it without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from sidecar.core.vote import SHED, RouteVerdict, VoteConfig, abstention
from sidecar.errors import IndexLoadError
from sidecar.semantic.index import ExemplarIndex
from sidecar.semantic.micro_batcher import MicroBatcher
from sidecar.semantic.stages import (
    decided_by_stage1,
    stage1_may_decide,
    stage1_verdict,
    stage2_verdict,
)
from sidecar.semantic.static_embedder import StaticEmbedder

log = logging.getLogger(__name__)

INDEX_POLL_S = 2.0

# Times one named stage of a decision ("stage1", "embed", "search", ...): the serving
# layer makes it a tracing span and a histogram; here it is only a context to run in.
StageTimer = Callable[[str], AbstractContextManager[object]]


def untimed(_: str) -> AbstractContextManager[object]:
    """The StageTimer that times nothing."""
    return contextlib.nullcontext()


@dataclass(frozen=True)
class IndexInfo:
    """What a reload installed."""

    path: str
    exemplars: int
    fingerprint: str


class SemanticClassifier:
    """Classifies routing texts against the current exemplar index."""

    def __init__(
        self,
        batcher: MicroBatcher,
        index: ExemplarIndex,
        config: VoteConfig,
        *,
        index_path: Path | None,
        cache_size: int,
        max_queue_s: float = 0.02,
        reload_root: Path | None = None,
        static: StaticEmbedder | None = None,
    ) -> None:
        self._batcher = batcher
        self._static = static
        self._index = index
        self._generation = 0
        self._config = config
        self._index_path = index_path
        self._reload_root = None if reload_root is None else reload_root.resolve()
        self._cache: OrderedDict[tuple[int, str], RouteVerdict] = OrderedDict()
        self._cache_size = cache_size
        self._reload_lock = asyncio.Lock()
        self._max_queue_s = max_queue_s
        self._saturated: Callable[[], bool] = lambda: False
        self._timer: StageTimer = untimed

    def time_stages(self, timer: StageTimer) -> None:
        """Run each stage (stage1, embed, search) inside `timer(stage)` from now on."""
        self._timer = timer

    def shed_when(self, saturated: Callable[[], bool]) -> None:
        """Also decide on stage 1 alone while `saturated()` says the process is saturated."""
        self._saturated = saturated

    async def classify(self, text: str) -> RouteVerdict:
        """Stage 1, then (unless it is confident) stage 2; exact repeats come from the cache."""
        key = (self._generation, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        first = self._stage1(text) if stage1_may_decide(self._config) else None
        if first is not None and decided_by_stage1(first, self._config):
            self._remember(key, first)
            return first
        if self._batcher.overloaded(self._max_queue_s) or self._saturated():
            first = first or self._stage1(text)
            log.debug(
                "shedding to %s: a new prompt would wait %.0f ms for the model (budget %.0f ms),"
                " or the sidecar is saturated",
                "stage 1" if first is not None else "the default route",
                1000 * self._batcher.expected_wait_s(), 1000 * self._max_queue_s,
            )  # fmt: skip
            return abstention(SHED) if first is None else replace(first, overloaded=True)
        with self._timer("embed"):
            vector = await self._batcher.embed(text)
        with self._timer("search"):
            index, generation = self._index, self._generation
            neighbours = index.search(vector.reshape(1, -1), self._config.k)[0]
            result = stage2_verdict(index, vector, neighbours, self._config)
        self._remember((generation, text), result)
        return result

    def _stage1(self, text: str) -> RouteVerdict | None:
        """The stage-1 verdict on the current index, or None when stage 1 cannot run."""
        heads = self._index.heads
        if self._static is None or heads is None or heads.stage1 is None:
            return None
        with self._timer("stage1"):
            return stage1_verdict(heads, self._static.embed_one(text), self._config)

    def _remember(self, key: tuple[int, str], verdict: RouteVerdict) -> None:
        if self._cache_size:
            self._cache[key] = verdict
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def expected_wait_s(self) -> float:
        """How long a new prompt would wait for the model now (a gauge on /metrics)."""
        return self._batcher.expected_wait_s()

    async def reload(self, path: str | None) -> IndexInfo:
        """Load an index from disk and swap it in; on failure the old one keeps serving."""
        target = Path(path) if path else self._index_path
        if target is None:
            raise IndexLoadError("no index path given and the sidecar was not started with one")
        self._check_allowed(target)
        async with self._reload_lock:
            loaded = await asyncio.to_thread(
                ExemplarIndex.load,
                target,
                expected_fingerprint=self._batcher.embedder.fingerprint,
                expected_static=None if self._static is None else self._static.fingerprint,
            )
            self._index = loaded
            self._generation += 1
            self._cache.clear()
            self._index_path = target
        log.info("exemplar index swapped: %s (%d exemplars)", target, len(loaded))
        return IndexInfo(path=str(target), exemplars=len(loaded), fingerprint=loaded.fingerprint)

    def _check_allowed(self, target: Path) -> None:
        """A reload may read only the configured index or a directory under `reload_root`.

        The API is on the sidecar's gRPC port; without this, anyone who can reach it could
        make the sidecar open any path on its filesystem.
        """
        resolved = target.resolve()
        if self._index_path is not None and resolved == self._index_path.resolve():
            return
        if self._reload_root is not None and resolved.is_relative_to(self._reload_root):
            return
        where = f"under {self._reload_root}" if self._reload_root else "the configured index"
        raise IndexLoadError(
            f"refusing to load an index from {target}: reloads may only read {where} "
            "(settings: semantic.reload_dir)"
        )


def _index_stamp(directory: Path) -> tuple[float, float] | None:
    try:
        return (
            (directory / "meta.json").stat().st_mtime,
            (directory / "index.faiss").stat().st_mtime,
        )
    except OSError:
        return None


async def watch_index(classifier: SemanticClassifier, directory: Path) -> None:
    """Reload the index whenever its files change; a broken new index is logged and skipped."""
    seen = _index_stamp(directory)
    while True:
        await asyncio.sleep(INDEX_POLL_S)
        stamp = _index_stamp(directory)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        try:
            await classifier.reload(str(directory))
        except IndexLoadError as error:
            log.error("new exemplar index refused, the old one keeps serving: %s", error)

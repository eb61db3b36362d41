"""Semantic routing in the sidecar: embedder + exemplar index + vote, with hot index swap.

Load shedding. The embedder is the one expensive step (~8 ms of CPU per 30-token prompt
on a 2-core machine), so under overload its queue would grow past Envoy's ext_proc
timeout and every request would fail open. Instead, a prompt whose expected wait for
the model exceeds `max_queue_ms` is decided at once without the classifier (the policy's
default route, with the reason in the explanation), and the model keeps serving the
prompts it admitted at full speed.

Theory. The live index is one attribute, replaced by a single reference assignment on the
event loop. A request reads that reference once, after its embedding is ready, and uses
that index object for its search; so every decision is made against exactly one whole
index, the old or the new, never a half-loaded one. A new index is loaded and checked
(files present, FAISS readable, metadata consistent, same embedder fingerprint) in a
worker thread *before* the swap; if any check fails the old index keeps serving and the
caller gets IndexLoadError. The exact-repeat cache is keyed by the index generation, so
a swap invalidates it without a lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.vote import SHED, RouteVerdict, VoteConfig, abstention, vote
from sidecar.errors import IndexLoadError
from sidecar.semantic.index import ExemplarIndex
from sidecar.semantic.micro_batcher import MicroBatcher

log = logging.getLogger(__name__)

INDEX_POLL_S = 2.0


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
        max_queue_s: float = 0.05,
        reload_root: Path | None = None,
    ) -> None:
        self._batcher = batcher
        self._index = index
        self._generation = 0
        self._config = config
        self._index_path = index_path
        self._reload_root = None if reload_root is None else reload_root.resolve()
        self._cache: OrderedDict[tuple[int, str], RouteVerdict] = OrderedDict()
        self._cache_size = cache_size
        self._reload_lock = asyncio.Lock()
        self._max_queue_s = max_queue_s

    async def classify(self, text: str) -> RouteVerdict:
        """Embed (batched, off the loop), search, vote; exact repeats come from the cache."""
        key = (self._generation, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self._batcher.overloaded(self._max_queue_s):
            log.debug(
                "shedding: a new prompt would wait %.0f ms for the model (budget %.0f ms)",
                1000 * self._batcher.expected_wait_s(), 1000 * self._max_queue_s,
            )  # fmt: skip
            return abstention(SHED)
        vector = await self._batcher.embed(text)
        index, generation = self._index, self._generation
        neighbours = index.search(vector.reshape(1, -1), self._config.k)[0]
        result = vote(neighbours, self._config)
        if self._cache_size:
            self._cache[(generation, text)] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

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
            fingerprint = self._batcher.embedder.fingerprint
            loaded = await asyncio.to_thread(
                ExemplarIndex.load, target, expected_fingerprint=fingerprint
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

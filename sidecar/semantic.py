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
import contextlib
import hashlib
import importlib.resources
import logging
from collections import OrderedDict
from pathlib import Path

from sidecar.api import IndexInfo
from sidecar.batcher import MicroBatcher
from sidecar.classifier import ClassifierConfig, RouteVerdict, vote
from sidecar.decision import SemanticRoute
from sidecar.embedder import Embedder, OnnxEmbedder, default_data_dir, load_default_embedder
from sidecar.errors import IndexLoadError
from sidecar.exemplars import load_exemplars
from sidecar.index import ExemplarIndex, build_index
from sidecar.server import SemanticParts
from sidecar.service import Classification, NeighbourView
from sidecar.settings import SemanticSettings, Settings

log = logging.getLogger(__name__)

# Neighbours shown in an explanation; the vote itself uses all k.
EXPLAIN_NEIGHBOURS = 5
INDEX_POLL_S = 2.0


def shipped_exemplars() -> Path:
    """The default exemplar set that ships inside the package."""
    return Path(str(importlib.resources.files("sidecar") / "data" / "exemplars.jsonl"))


def to_classification(verdict: RouteVerdict) -> Classification:
    """The service-facing view of a vote (no texts, a few neighbours)."""
    return Classification(
        semantic=SemanticRoute(
            route=verdict.route,
            confidence=verdict.confidence,
            predicted_output_tokens=verdict.predicted_output_tokens,
        ),
        route_scores=dict(verdict.scores),
        neighbours=tuple(
            NeighbourView(route=n.route, similarity=n.similarity)
            for n in verdict.neighbours[:EXPLAIN_NEIGHBOURS]
        ),
        threshold=verdict.threshold,
        abstain_reason=verdict.abstain_reason,
    )


def _overloaded(expected_wait_s: float, budget_s: float) -> Classification:
    reason = (
        f"classifier overloaded: a new prompt would wait {1000 * expected_wait_s:.0f} ms "
        f"for the model (budget {1000 * budget_s:.0f} ms)"
    )
    return Classification(
        semantic=SemanticRoute(route=None, confidence=0.0),
        route_scores={},
        neighbours=(),
        threshold=0.0,
        abstain_reason=reason,
        shed=True,
    )


class SemanticClassifier:
    """Classifies routing texts against the current exemplar index."""

    def __init__(
        self,
        batcher: MicroBatcher,
        index: ExemplarIndex,
        config: ClassifierConfig,
        *,
        index_path: Path | None,
        cache_size: int,
        max_queue_s: float = 0.05,
    ) -> None:
        self._batcher = batcher
        self._index = index
        self._generation = 0
        self._config = config
        self._index_path = index_path
        self._cache: OrderedDict[tuple[int, str], Classification] = OrderedDict()
        self._cache_size = cache_size
        self._reload_lock = asyncio.Lock()
        self._max_queue_s = max_queue_s

    @property
    def index(self) -> ExemplarIndex:
        """The index serving right now."""
        return self._index

    async def classify(self, text: str) -> Classification:
        """Embed (batched, off the loop), search, vote; exact repeats come from the cache."""
        key = (self._generation, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        expected_wait = self._batcher.expected_wait_s()
        if expected_wait > self._max_queue_s:
            return _overloaded(expected_wait, self._max_queue_s)
        vector = await self._batcher.embed(text)
        index, generation = self._index, self._generation
        neighbours = index.search(vector.reshape(1, -1), self._config.k)[0]
        result = to_classification(vote(neighbours, self._config))
        if self._cache_size:
            self._cache[(generation, text)] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    async def reload(self, path: str | None) -> IndexInfo:
        """Load an index from disk and swap it in; on failure the old one keeps serving."""
        target = Path(path) if path else self._index_path
        if target is None:
            raise IndexLoadError("no index path given and the sidecar was not started with one")
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


def make_embedder(settings: SemanticSettings) -> Embedder:
    """The configured embedder: a user-supplied ONNX model or the packaged MiniLM."""
    if settings.onnx_model is not None and settings.tokenizer is not None:
        return OnnxEmbedder(
            settings.onnx_model,
            settings.tokenizer,
            max_tokens=settings.max_tokens,
            threads=settings.threads,
        )
    return load_default_embedder(
        settings.data_dir,
        quantize=settings.quantize,
        max_tokens=settings.max_tokens,
        threads=settings.threads,
    )


def default_index(settings: SemanticSettings, embedder: Embedder) -> ExemplarIndex:
    """Build (once, then cache in the data dir) the index of the configured exemplars."""
    exemplars_path = settings.exemplars or shipped_exemplars()
    digest = hashlib.sha256(exemplars_path.read_bytes())
    digest.update(embedder.fingerprint.encode())
    data_dir = settings.data_dir or default_data_dir()
    cached = data_dir / "indexes" / digest.hexdigest()[:16]
    with contextlib.suppress(IndexLoadError):
        return ExemplarIndex.load(cached, expected_fingerprint=embedder.fingerprint)
    log.info("building the exemplar index from %s", exemplars_path)
    index = build_index(load_exemplars(exemplars_path), embedder)
    index.save(cached)
    return index


async def build_semantic(settings: Settings) -> SemanticParts | None:
    """Build the semantic classifier for the sidecar, or None when it is disabled."""
    semantic = settings.semantic
    if not semantic.enabled:
        return None
    embedder = await asyncio.to_thread(make_embedder, semantic)
    if semantic.index is not None:
        index = await asyncio.to_thread(
            ExemplarIndex.load, semantic.index, expected_fingerprint=embedder.fingerprint
        )
    else:
        index = await asyncio.to_thread(default_index, semantic, embedder)
    batcher = MicroBatcher(
        embedder, max_batch=semantic.batch_max, max_wait_s=semantic.batch_wait_ms / 1000
    )
    classifier = SemanticClassifier(
        batcher,
        index,
        settings.classifier,
        index_path=semantic.index,
        cache_size=semantic.cache_size,
        max_queue_s=semantic.max_queue_ms / 1000,
    )
    watcher: asyncio.Task[None] | None = None
    if semantic.index is not None and semantic.watch_index:
        watcher = asyncio.create_task(watch_index(classifier, semantic.index))

    async def close() -> None:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await batcher.close()

    return SemanticParts(classifier=classifier, reload_index=classifier.reload, close=close)

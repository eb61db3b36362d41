"""The composition root: the semantic engine and the live feeds, built from settings.

This is the one module that knows how the parts fit: which embedder the settings ask
for, the stage-1 static embedder distilled from it, which index to load or build (cached
in the data directory by exemplar file, index format, embedder and static table), the
micro-batcher in front of the model, the classifier, and the watcher that hot-swaps a
rebuilt index; and the live board with the feeds that fill it (Envoy's health view, the
queue scrape or the Prometheus fleet feed, the price feed, the learner of Envoy's
access log), each only when configured; and the cascade (its evaluator, its learned
scorer, where it escalates to). Nothing below it reads settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidecar.cascade.evaluator import AnswerEvaluator
from sidecar.cascade.memory import CascadeMemory
from sidecar.cascade.scorer import load_scorer
from sidecar.config.envoy import (
    CASCADE_FILTER,
    api_listener_address,
    ext_proc_max_message_timeout_s,
)
from sidecar.config.settings import PassiveFeedSettings, SemanticSettings, Settings
from sidecar.core.cascade import CascadeRules
from sidecar.core.catalogue import Catalogue
from sidecar.core.decision import ProviderSnapshot
from sidecar.errors import ConfigError, IndexLoadError
from sidecar.feeds.envoy_health import health_feed
from sidecar.feeds.live import LiveBoard
from sidecar.feeds.passive import PassiveLearner
from sidecar.feeds.poller import Poller
from sidecar.feeds.price_feed import PriceFeed
from sidecar.feeds.promql import prometheus_load_feed
from sidecar.feeds.scrape import LoadScraper, scrape_targets
from sidecar.semantic.classifier import IndexInfo, SemanticClassifier, watch_index
from sidecar.semantic.embedder import Embedder, OnnxEmbedder
from sidecar.semantic.exemplars import load_exemplars, shipped_exemplars
from sidecar.semantic.index import FORMAT_VERSION, ExemplarIndex, build_index
from sidecar.semantic.micro_batcher import MicroBatcher
from sidecar.semantic.model_store import (
    default_data_dir,
    load_default_embedder,
    load_static_embedder,
)
from sidecar.semantic.stages import has_stage1
from sidecar.semantic.static_embedder import StaticEmbedder, TokenTeacher
from sidecar.serving.cascade import Cascade

log = logging.getLogger(__name__)

IndexReloader = Callable[[str | None], Awaitable[IndexInfo]]


@dataclass(frozen=True)
class SemanticParts:
    """The semantic classifier, how to reload its index, and how to shut it down."""

    classifier: SemanticClassifier
    reload_index: IndexReloader
    close: Callable[[], Awaitable[None]]
    # The encoder (its fingerprint and width) and the micro-batcher in front of it, for
    # other readers: the cascade's scorer and memory.
    embedder: Embedder
    embed: Callable[[str], Awaitable[npt.NDArray[np.float32]]]


SemanticFactory = Callable[[Settings], Awaitable[SemanticParts | None]]


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


def make_static(settings: SemanticSettings, embedder: Embedder) -> StaticEmbedder | None:
    """The stage-1 embedder distilled from `embedder`, or None when stage 1 is off."""
    if not settings.stage1 or not isinstance(embedder, TokenTeacher):
        return None
    return load_static_embedder(embedder, settings.data_dir, max_tokens=settings.max_tokens)


def default_index(
    settings: SemanticSettings, embedder: Embedder, static: StaticEmbedder | None = None
) -> ExemplarIndex:
    """Build (once, then cache in the data dir) the index of the configured exemplars."""
    exemplars_path = settings.exemplars or shipped_exemplars()
    digest = hashlib.sha256(exemplars_path.read_bytes())
    digest.update(f"format {FORMAT_VERSION}".encode())
    digest.update(embedder.fingerprint.encode())
    digest.update(b"" if static is None else static.fingerprint.encode())
    data_dir = settings.data_dir or default_data_dir()
    cached = data_dir / "indexes" / digest.hexdigest()[:16]
    expected_static = None if static is None else static.fingerprint
    with contextlib.suppress(IndexLoadError):
        return ExemplarIndex.load(
            cached, expected_fingerprint=embedder.fingerprint, expected_static=expected_static
        )
    log.info("building the exemplar index from %s", exemplars_path)
    # In batches no larger than serving's: onnxruntime keeps its arena at the largest batch
    # it has run (64 at a time left this process 68 MiB larger for good).
    exemplars = load_exemplars(exemplars_path)
    index = build_index(exemplars, embedder, static=static, batch_size=settings.batch_max)
    index.save(cached)
    return index


async def build_semantic(settings: Settings) -> SemanticParts | None:
    """Build the semantic classifier for the sidecar, or None when it is disabled."""
    semantic = settings.semantic
    if not semantic.enabled:
        return None
    embedder = await asyncio.to_thread(make_embedder, semantic)
    static = await asyncio.to_thread(make_static, semantic, embedder)
    if semantic.index is not None:
        index = await asyncio.to_thread(
            ExemplarIndex.load,
            semantic.index,
            expected_fingerprint=embedder.fingerprint,
            expected_static=None if static is None else static.fingerprint,
        )
    else:
        index = await asyncio.to_thread(default_index, semantic, embedder, static)
    if static is not None and not has_stage1(index):
        log.warning(
            "the exemplar index has no stage-1 head: every prompt waits for the encoder and "
            "overload sheds to the default route; rebuild it with `inference-router index build`"
        )
    batcher = MicroBatcher(
        embedder, max_batch=semantic.batch_max, max_wait_s=semantic.batch_wait_ms / 1000
    )
    classifier = SemanticClassifier(
        batcher,
        index,
        settings.classifier,
        index_path=semantic.index,
        reload_root=semantic.reload_dir or (semantic.index.parent if semantic.index else None),
        cache_size=semantic.cache_size,
        max_queue_s=semantic.max_queue_ms / 1000,
        static=static,
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

    return SemanticParts(
        classifier=classifier,
        reload_index=classifier.reload,
        close=close,
        embedder=embedder,
        embed=batcher.embed,
    )


def build_cascade(
    settings: Settings,
    envoy_config: Mapping[str, object],
    catalogue: Catalogue,
    semantic: SemanticParts | None,
    on_outcome: Callable[[str], None],
) -> tuple[Cascade, float] | None:
    """The cascade and how long Envoy lets it hold an answer, or None when it is off.

    Off when the settings say so, or when the Envoy config has no cascade filter (then no
    answer could ever be held back). A budget Envoy would not wait for, a scorer that
    needs the encoder when semantic routing is off, or no address to escalate to are
    configuration errors.
    """
    config = settings.cascade
    if not config.enabled:
        return None
    source = str(settings.envoy_config)
    wait_s = ext_proc_max_message_timeout_s(envoy_config, CASCADE_FILTER)
    if wait_s <= 0:
        log.info("cascade off: %s has no %s filter with a max_message_timeout", source,
                 CASCADE_FILTER)  # fmt: skip
        return None
    if config.budget_s + 1 > wait_s:
        raise ConfigError(
            f"cascade.budget_s: {config.budget_s} s, but Envoy waits at most {wait_s:g} s for "
            f"a held-back answer ({source}, {CASCADE_FILTER} max_message_timeout); "
            "keep the budget at least 1 s below it"
        )
    envoy_url = config.envoy_url
    if envoy_url is None:
        listener = api_listener_address(envoy_config, source)
        if listener is None:
            raise ConfigError(
                f"cascade.envoy_url: not set, and {source} has no openai_api listener"
            )
        host, port = listener
        envoy_url = f"http://{host}:{port}"
    scorer = None
    if config.scorer is not None:
        fingerprint = semantic.embedder.fingerprint if semantic is not None else None
        scorer = load_scorer(config.scorer, expected_fingerprint=fingerprint)
        if scorer.needs_embedding and semantic is None:
            raise ConfigError(
                f"cascade.scorer: {config.scorer} reads MiniLM embeddings, but semantic "
                "routing (the encoder) is off"
            )
    memory = _cascade_memory(settings, semantic)
    cascade = Cascade(
        rules=CascadeRules(
            policies=frozenset(config.policies),
            max_attempts=config.max_attempts,
            budget_s=config.budget_s,
        ),
        table=settings.routing_table(),
        catalogue=catalogue,
        judge=AnswerEvaluator(config.evaluator, scorer),
        threshold=config.evaluator.threshold,
        envoy_url=envoy_url,
        embed=semantic.embed if semantic is not None else None,
        ask_logprobs=config.ask_logprobs,
        max_pending=config.max_pending,
        on_outcome=on_outcome,
        memory=memory,
    )
    return cascade, wait_s


def _cascade_memory(settings: Settings, semantic: SemanticParts | None) -> CascadeMemory | None:
    """The memory of escalated prompts, when learning from outcomes is on."""
    learn = settings.cascade.learn
    if not learn.enabled or learn.path is None:
        return None
    if semantic is None:
        raise ConfigError("cascade.learn: needs semantic routing on (it remembers MiniLM vectors)")
    return CascadeMemory.load(
        learn.path,
        fingerprint=semantic.embedder.fingerprint,
        dim=semantic.embedder.dim,
        similarity=learn.similarity,
        max_entries=learn.max_entries,
    )


def passive_learner(settings: PassiveFeedSettings, catalogue: Catalogue) -> PassiveLearner | None:
    """What learns from Envoy's access log of upstream attempts, or None when it is off."""
    if not settings.enabled:
        return None
    return PassiveLearner(
        catalogue,
        max_cooldown_s=settings.max_cooldown_s,
        backoff_s=settings.backoff_s,
        failure_run=settings.failure_run,
        max_age_s=settings.max_age_s,
    )


def build_feeds(
    settings: Settings,
    envoy_config: Mapping[str, object],
    catalogue: Catalogue,
    passive: PassiveLearner | None = None,
) -> tuple[LiveBoard, tuple[Poller, ...]]:
    """The live board the decisions read, and the feeds (not started) that fill it."""
    source = str(settings.envoy_config)
    health = health_feed(settings.envoy_health, envoy_config, source, catalogue)
    board = LiveBoard(
        catalogue,
        max_age_s=settings.load_feed.max_age_s,
        price_max_age_s=settings.price_feed.max_age_s,
        push_max_age_s=settings.push_feed.max_age_s,
        health=health.snapshot if health is not None else ProviderSnapshot,
        passive=passive.signals if passive is not None else None,
    )
    feeds: list[Poller] = [] if health is None else [health]
    load = settings.load_feed
    if load.enabled and load.source == "prometheus" and load.prometheus is not None:
        fleet = prometheus_load_feed(board, catalogue, load.prometheus, load)
        if fleet is not None:
            feeds.append(fleet)
    targets = scrape_targets(catalogue) if load.enabled and load.source == "scrape" else ()
    if targets:
        feeds.append(
            LoadScraper(
                board,
                targets,
                interval_s=settings.load_feed.interval_s,
                timeout_s=settings.load_feed.timeout_s,
            )
        )
    if settings.price_feed.source:
        feeds.append(
            PriceFeed(
                board,
                catalogue,
                settings.price_feed.source,
                interval_s=settings.price_feed.interval_s,
                timeout_s=settings.price_feed.timeout_s,
            )
        )
    return board, tuple(feeds)

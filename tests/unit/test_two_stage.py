"""The two-stage classifier: heads in the index, stage 1 before the encoder, overload to stage 1."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.core.vote import OUT_OF_SCOPE, SHED, STAGE_MODEL, STAGE_STATIC, VoteConfig
from sidecar.errors import IndexLoadError
from sidecar.semantic.classifier import SemanticClassifier
from sidecar.semantic.exemplars import Exemplar
from sidecar.semantic.heads import HEADS_FILE, fit_heads
from sidecar.semantic.index import META_FILE, ExemplarIndex, build_index
from sidecar.semantic.micro_batcher import MicroBatcher
from sidecar.semantic.stages import decided_by_stage1, stage1_verdict, stage2_verdict
from sidecar.semantic.static_embedder import StaticEmbedder, distill_table
from tests.fakes import GatedEmbedder, HashEmbedder, TokenHashEmbedder, write_word_tokenizer

SMALL = [
    "hello there", "hi friend", "hey thanks", "good morning", "thanks a lot", "hi there",
    "hello friend", "good morning friend", "hey there", "thanks friend", "hi thanks",
    "hello good morning",
]  # fmt: skip
FRONTIER = [
    "prove the theorem", "prove the lemma rigorously", "formal proof of the bound",
    "proof of the theorem", "prove the bound", "formal proof of the lemma",
    "prove the theorem rigorously", "proof of the lemma", "rigorously prove the bound",
    "formal proof", "prove a lemma", "proof of a bound",
]  # fmt: skip
OFF_TOPIC = [
    "what is the weather on mars", "weather today", "the moon today", "weather on the moon",
    "what is on mars", "mars weather today", "what is the moon", "weather on mars today",
    "the weather today", "moon weather", "what is mars", "the moon on mars",
]  # fmt: skip
EXEMPLARS = (
    [Exemplar(t, "small", 20) for t in SMALL]
    + [Exemplar(t, "frontier", 900) for t in FRONTIER]
    + [Exemplar(t, OUT_OF_SCOPE) for t in OFF_TOPIC]
)
CONFIG = VoteConfig(k=5, threshold=-1.0, temperature=0.1)
NO_SHEDDING_S = 3600.0


@pytest.fixture
def teacher(tmp_path: Path) -> TokenHashEmbedder:
    return TokenHashEmbedder(write_word_tokenizer(tmp_path / "tokenizer.json"))


@pytest.fixture
def static(teacher: TokenHashEmbedder) -> StaticEmbedder:
    return StaticEmbedder(distill_table(teacher, dims=16), teacher.tokenizer_path)


def _index(embedder: HashEmbedder | TokenHashEmbedder, static: StaticEmbedder) -> ExemplarIndex:
    return build_index(EXEMPLARS, embedder, static=static)


def test_heads_are_fitted_with_out_of_fold_evidence(
    teacher: TokenHashEmbedder, static: StaticEmbedder
) -> None:
    index = _index(teacher, static)
    heads = index.heads
    assert heads is not None and heads.stage1 is not None
    assert heads.classes == (OUT_OF_SCOPE, "frontier", "small")
    assert heads.static_fingerprint == static.fingerprint
    assert heads.tokens_for("small") == 20 and heads.tokens_for(OUT_OF_SCOPE) is None
    assert heads.stage1_out_of_fold is not None and heads.stage2_out_of_fold is not None
    assert heads.stage1_out_of_fold.shape == (len(EXEMPLARS), 3)
    assert heads.stage1_fit is not None and heads.stage1_fit.folds == 5
    verdict = stage1_verdict(heads, static.embed_one("hello there friend"), CONFIG)
    assert (verdict.route, verdict.stage, verdict.neighbours) == ("small", STAGE_STATIC, ())
    assert verdict.predicted_output_tokens == 20  # the route's mean: no neighbours here
    off = stage1_verdict(heads, static.embed_one("weather on mars"), CONFIG)
    assert off.route is None and off.abstain_reason == "out_of_scope"


def test_too_few_exemplars_or_one_route_give_no_heads(teacher: TokenHashEmbedder) -> None:
    vectors = teacher.embed([e.text for e in EXEMPLARS])
    assert fit_heads(EXEMPLARS[:9], vectors[:9], None, static_fingerprint=None) is None
    one_route = [dataclasses.replace(e, route="small") for e in EXEMPLARS]
    assert fit_heads(one_route, vectors, None, static_fingerprint=None) is None
    stage2_only = build_index(EXEMPLARS, teacher)  # no static embedder: no stage 1
    assert stage2_only.heads is not None and stage2_only.heads.stage1 is None
    assert build_index(EXEMPLARS, teacher, heads=False).heads is None


def test_the_stage2_head_decides_when_asked_and_knn_still_explains(
    teacher: TokenHashEmbedder, static: StaticEmbedder
) -> None:
    index = _index(teacher, static)
    row = teacher.embed(["prove the lemma of the bound"])
    neighbours = index.search(row, CONFIG.k)[0]
    by_head = stage2_verdict(index, row[0], neighbours, dataclasses.replace(CONFIG, decider="head"))
    by_knn = stage2_verdict(index, row[0], neighbours, CONFIG)
    assert by_head.route == by_knn.route == "frontier"
    assert by_head.stage == by_knn.stage == STAGE_MODEL
    assert by_head.neighbours == neighbours and by_head.predicted_output_tokens == 900
    assert set(by_head.scores) <= {OUT_OF_SCOPE, "frontier", "small"}


def test_an_index_with_heads_roundtrips_and_evidence_is_read_on_request(
    teacher: TokenHashEmbedder, static: StaticEmbedder, tmp_path: Path
) -> None:
    index = _index(teacher, static)
    index.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / META_FILE).read_text())
    assert meta["format_version"] == 2 and meta["heads"]["file"] == HEADS_FILE
    loaded = ExemplarIndex.load(
        tmp_path / "i", expected_fingerprint=teacher.fingerprint, expected_static=static.fingerprint
    )
    assert loaded.heads is not None and loaded.heads.stage2_out_of_fold is None
    row = static.embed_one("good morning friend")
    assert stage1_verdict(loaded.heads, row, CONFIG) == stage1_verdict(index.heads, row, CONFIG)  # type: ignore[arg-type]
    with_evidence = ExemplarIndex.load(
        tmp_path / "i", expected_fingerprint=teacher.fingerprint, evidence=True
    )
    assert with_evidence.heads is not None and with_evidence.heads.stage1_out_of_fold is not None


def test_a_head_from_another_table_or_a_broken_head_is_refused(
    teacher: TokenHashEmbedder, static: StaticEmbedder, tmp_path: Path
) -> None:
    _index(teacher, static).save(tmp_path / "i")
    with pytest.raises(IndexLoadError, match="static table"):
        ExemplarIndex.load(
            tmp_path / "i", expected_fingerprint=teacher.fingerprint, expected_static="static:x"
        )
    (tmp_path / "i" / HEADS_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(IndexLoadError, match="broken heads"):
        ExemplarIndex.load(tmp_path / "i", expected_fingerprint=teacher.fingerprint)


def test_a_format_1_index_still_loads_without_heads(
    teacher: TokenHashEmbedder, tmp_path: Path
) -> None:
    build_index(EXEMPLARS, teacher, heads=False).save(tmp_path / "old")
    meta_path = tmp_path / "old" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    old = ExemplarIndex.load(tmp_path / "old", expected_fingerprint=teacher.fingerprint)
    assert old.heads is None and len(old) == len(EXEMPLARS)
    meta["format_version"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="format version 3"):
        ExemplarIndex.load(tmp_path / "old", expected_fingerprint=teacher.fingerprint)


def test_the_gate_decides_who_skips_the_encoder(
    teacher: TokenHashEmbedder, static: StaticEmbedder
) -> None:
    heads = _index(teacher, static).heads
    assert heads is not None
    verdict = stage1_verdict(heads, static.embed_one("hello there friend"), CONFIG)
    assert decided_by_stage1(verdict, dataclasses.replace(CONFIG, stage1_gate=0.5))
    assert not decided_by_stage1(verdict, dataclasses.replace(CONFIG, stage1_gate=None))
    strict = dataclasses.replace(CONFIG, stage1_gate=0.5, stage1_threshold=1.0)
    # Under its own minimum, stage 1 abstains only when alone; with the encoder free it asks.
    assert not decided_by_stage1(stage1_verdict(heads, static.embed_one("hi"), strict), strict)


def _classifier(
    embedder: HashEmbedder | TokenHashEmbedder,
    static: StaticEmbedder | None,
    config: VoteConfig,
    *,
    max_queue_s: float = NO_SHEDDING_S,
    batcher: MicroBatcher | None = None,
    index: ExemplarIndex | None = None,
) -> SemanticClassifier:
    batcher = batcher or MicroBatcher(embedder, max_batch=8, max_wait_s=0)
    assert static is not None or index is not None
    return SemanticClassifier(
        batcher,
        index or _index(embedder, static),  # type: ignore[arg-type]
        config,
        index_path=None,
        cache_size=16,
        max_queue_s=max_queue_s,
        static=static,
    )


async def test_a_confident_stage1_skips_the_encoder(
    teacher: TokenHashEmbedder, static: StaticEmbedder
) -> None:
    gated = _classifier(teacher, static, dataclasses.replace(CONFIG, stage1_gate=0.6))
    calls = teacher.calls
    first = await gated.classify("hello there friend")
    assert (first.route, first.stage, first.overloaded) == ("small", STAGE_STATIC, False)
    assert teacher.calls == calls  # no model call at all
    unsure = await gated.classify("friend of the moon")  # mixed evidence: not confident
    assert unsure.stage == STAGE_MODEL and teacher.calls == calls + 1
    everyone = _classifier(teacher, static, dataclasses.replace(CONFIG, stage1_gate=None))
    assert (await everyone.classify("hello there friend")).stage == STAGE_MODEL
    no_static = _classifier(teacher, None, CONFIG, index=_index(teacher, static))
    assert (await no_static.classify("hello there friend")).stage == STAGE_MODEL


async def test_overload_sheds_to_stage1_and_does_not_cache_it(static: StaticEmbedder) -> None:
    embedder = GatedEmbedder()
    batcher = MicroBatcher(embedder, max_batch=1, max_wait_s=0)
    index = _index(HashEmbedder(), static)
    config = dataclasses.replace(CONFIG, stage1_gate=None)  # stage 1 only when overloaded
    try:
        warm_up = asyncio.create_task(batcher.embed("warm up"))
        assert await asyncio.to_thread(embedder.wait_entered, 1)
        embedder.allow(1)
        await warm_up
        classifier = _classifier(
            embedder, static, config, max_queue_s=3.5 * batcher.expected_wait_s(),
            batcher=batcher, index=index,
        )  # fmt: skip
        texts = [f"hello there friend {'hi ' * i}" for i in range(10)]
        burst = [asyncio.create_task(classifier.classify(t)) for t in texts]
        assert await asyncio.to_thread(embedder.wait_entered, 2)
        shed = [task.result() for task in burst if task.done()]
        embedder.open()
        results = await asyncio.gather(*burst)
        again = await classifier.classify(texts[-1])  # was shed: now the encoder decides
    finally:
        embedder.open()
        await batcher.close()
    assert len(shed) == 7
    assert all(v.stage == STAGE_STATIC and v.overloaded and v.route == "small" for v in shed)
    assert all(v.abstain_reason != SHED for v in results)
    assert sum(v.stage == STAGE_MODEL for v in results) == 3
    assert again.stage == STAGE_MODEL and not again.overloaded


async def test_a_saturated_sidecar_decides_on_stage1_until_it_is_not(
    teacher: TokenHashEmbedder, static: StaticEmbedder
) -> None:
    classifier = _classifier(teacher, static, dataclasses.replace(CONFIG, stage1_gate=None))
    saturated = True
    classifier.shed_when(lambda: saturated)
    calls = teacher.calls
    shed = await classifier.classify("hello there friend")
    assert (shed.stage, shed.overloaded, shed.route) == (STAGE_STATIC, True, "small")
    assert teacher.calls == calls  # the encoder was not asked
    saturated = False
    again = await classifier.classify("hello there friend")  # not cached: decided afresh
    assert (again.stage, again.overloaded) == (STAGE_MODEL, False)
    assert teacher.calls == calls + 1


async def test_a_reload_refuses_an_index_on_another_static_table(
    teacher: TokenHashEmbedder, static: StaticEmbedder, tmp_path: Path
) -> None:
    other_tokens = write_word_tokenizer(tmp_path / "other.json", ["hello", "there", "prove"])
    other_teacher = TokenHashEmbedder(other_tokens)
    other = StaticEmbedder(distill_table(other_teacher, dims=4), other_tokens)
    _index(teacher, other).save(tmp_path / "foreign")
    classifier = SemanticClassifier(
        MicroBatcher(teacher), _index(teacher, static), CONFIG, index_path=None,
        cache_size=0, reload_root=tmp_path, static=static,
    )  # fmt: skip
    with pytest.raises(IndexLoadError, match="static table"):
        await classifier.reload(str(tmp_path / "foreign"))


def test_stage1_embeddings_of_the_exemplars_separate_the_routes(static: StaticEmbedder) -> None:
    rows = static.embed(SMALL + FRONTIER)
    sims = rows @ rows.T
    np.fill_diagonal(sims, -1)
    nearest = sims.argmax(axis=1)
    same = (nearest < len(SMALL)) == (np.arange(len(rows)) < len(SMALL))
    assert same.mean() > 0.9

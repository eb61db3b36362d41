"""The real all-MiniLM-L6-v2, built from the packaged weights: numbers, cache, int8, CLI.

Building the model takes tens of seconds, so these are not unit tests; the embedder's
behaviour on small stand-in encoders is tested in tests/unit/test_embedder.py.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.cli import model_build
from sidecar.semantic.embedder import OnnxEmbedder
from sidecar.semantic.minilm_graph import build_minilm_onnx, locate_packaged_minilm
from sidecar.semantic.model_store import (
    DEFAULT_TOKENIZER_NAME,
    default_model_path,
    ensure_default_model,
    ensure_static_table,
    load_default_embedder,
    static_table_path,
)
from sidecar.semantic.static_embedder import StaticEmbedder, StaticTable

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"


@dataclass(frozen=True)
class Built:
    data_dir: Path
    fp32: Path
    int8: Path
    tokenizer: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    data_dir = tmp_path_factory.mktemp("model-cache")
    int8 = ensure_default_model(data_dir, weights="int8")
    fp32 = default_model_path(data_dir)
    return Built(data_dir, fp32, int8, data_dir / DEFAULT_TOKENIZER_NAME)


@pytest.fixture(scope="session")
def embedder(built: Built) -> OnnxEmbedder:
    return OnnxEmbedder(built.fp32, built.tokenizer, threads=1)


def cosines(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(b, axis=1), dtype=np.float64)


def test_matches_sentence_transformers_reference(built: Built) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    texts = [case["text"] for case in reference["cases"]]
    vectors = np.array([case["vector"] for case in reference["cases"]])
    # The reference truncates at its own max_seq_length; one sentence is longer than that.
    assert max(case["untruncated_tokens"] for case in reference["cases"]) > 256
    same_limit = OnnxEmbedder(
        built.fp32, built.tokenizer, max_tokens=reference["max_seq_length"], threads=1
    )
    rows = same_limit.embed(texts)  # one padded batch: short and long side by side
    assert rows.shape == (len(texts), 384) and rows.dtype == np.float32
    sims = cosines(rows, vectors)
    assert sims.min() >= 0.9999, dict(zip(texts, sims.round(5).tolist(), strict=True))


def test_rows_are_unit_length_and_batch_equals_single(embedder: OnnxEmbedder) -> None:
    texts = ["Hi", "Summarise this contract clause for a ten year old, please.", "", "x " * 40]
    batch = embedder.embed(texts)
    singles = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_long_input_is_truncated_at_max_tokens(built: Built, embedder: OnnxEmbedder) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 20  # 180 word pieces
    tail = " and then a completely different ending about volcanoes"
    assert embedder.max_tokens == 128
    np.testing.assert_allclose(
        embedder.embed([long_text]), embedder.embed([long_text + tail]), atol=1e-6
    )
    roomier = OnnxEmbedder(built.fp32, built.tokenizer, max_tokens=512, threads=1)
    assert float(cosines(roomier.embed([long_text]), roomier.embed([long_text + tail]))[0]) < 1


def test_empty_inputs(embedder: OnnxEmbedder) -> None:
    (row,) = embedder.embed([""])
    assert np.isfinite(row).all() and abs(float(np.linalg.norm(row)) - 1.0) < 1e-5
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("a plain string is not a batch")


def test_fingerprint_names_model_tokenizer_and_truncation(
    built: Built, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    again = OnnxEmbedder(built.fp32, built.tokenizer, threads=2)
    assert again.fingerprint == embedder.fingerprint  # thread count changes no vector
    shorter = OnnxEmbedder(built.fp32, built.tokenizer, max_tokens=64, threads=1)
    int8 = OnnxEmbedder(built.int8, built.tokenizer, threads=1)
    assert len({embedder.fingerprint, shorter.fingerprint, int8.fingerprint}) == 3
    # A second build elsewhere gives the same bytes, so replicas agree on the fingerprint.
    rebuilt = tmp_path / "again.onnx"
    build_minilm_onnx(locate_packaged_minilm(), rebuilt)
    assert rebuilt.read_bytes() == built.fp32.read_bytes()


def test_int8_model_is_smoothed_close_to_fp32(
    built: Built, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    """Held-out prompts (the calibration ran on the shipped exemplars): smoothing beats
    plain dynamic quantisation, and the int8 vectors stay within a cosine of 0.99."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    plain = tmp_path / "plain.int8.onnx"
    quantize_dynamic(
        built.fp32, plain, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
        per_channel=True,
    )  # fmt: skip
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    texts = [case["text"] for case in reference["cases"]] + HELD_OUT
    fp32 = embedder.embed(texts)
    smoothed = (OnnxEmbedder(built.int8, built.tokenizer, threads=1).embed(texts) * fp32).sum(1)
    unsmoothed = (OnnxEmbedder(plain, built.tokenizer, threads=1).embed(texts) * fp32).sum(1)
    assert smoothed.mean() > unsmoothed.mean()
    assert smoothed.mean() > 0.99 and smoothed.min() > 0.95 and (smoothed < 0.99999).all()


HELD_OUT = [
    "Can you refactor this Java class to use dependency injection?",
    "what time does the pharmacy on main street close",
    "Derive the closed form of the sum of the first n cubes and prove it by induction.",
    "Translate 'the meeting moved to Thursday' into German.",
    "my card was charged twice for the same order, how do I get a refund",
    "Explain the difference between TCP and UDP to a new network engineer.",
    "Write a limerick about a cat who learns to code.",
    "Summarise the attached quarterly report in three bullet points.",
    "Is it safe to take ibuprofen with coffee?",
    "List the prime factors of 3,599 and show your working.",
    "set an alarm for 6:45 tomorrow",
    "Draft a polite email declining a meeting invitation.",
]


def test_cache_is_reused_and_leaves_no_temp_files(built: Built) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.data_dir.iterdir()}
    assert ensure_default_model(built.data_dir, weights="int8") == built.int8
    assert ensure_default_model(built.data_dir) == built.fp32
    after = {p.name: p.stat().st_mtime_ns for p in built.data_dir.iterdir()}
    assert after == before
    assert sorted(before) == sorted([built.fp32.name, built.int8.name, DEFAULT_TOKENIZER_NAME])
    loaded = load_default_embedder(built.data_dir, quantize="none", threads=1)
    assert loaded.fingerprint == OnnxEmbedder(built.fp32, built.tokenizer).fingerprint


def test_cli_build_prints_fingerprint(
    built: Built, embedder: OnnxEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    model_build.configure(parser)
    args = ["--data-dir", str(built.data_dir), "--quantize", "none"]
    assert model_build.run(parser.parse_args(args)) == 0
    out = capsys.readouterr().out
    assert str(built.fp32) in out and embedder.fingerprint in out


# The static table is distilled from the real model once per session (~30 s on 2 cores);
# these tests come last so the data-dir listing above sees only the model files.


@pytest.fixture(scope="session")
def static_table(built: Built, embedder: OnnxEmbedder) -> StaticTable:
    return ensure_static_table(embedder, built.data_dir)


def test_the_static_table_covers_the_vocabulary_and_is_cached(
    built: Built, embedder: OnnxEmbedder, static_table: StaticTable
) -> None:
    assert static_table.vectors.shape == (30522, 256)
    assert static_table.source == embedder.fingerprint
    path = static_table_path(built.data_dir, embedder.fingerprint)
    stamp = path.stat().st_mtime_ns
    again = ensure_static_table(embedder, built.data_dir)
    assert again.fingerprint == static_table.fingerprint and path.stat().st_mtime_ns == stamp
    # A token's row is its `[CLS] token [SEP]` embedding, reduced: the PCA keeps it close.
    ids = embedder.embed_ids(np.array([[101, 2924, 102], [101, 5703, 102]]))  # bank, balance
    rows = static_table.vectors[[2924, 5703]] * static_table.scales[[2924, 5703], None]
    assert float(ids[0] @ ids[1]) > 0.3 and float(rows[0] @ rows[1]) > 0


def test_static_embeddings_find_the_same_paraphrases_as_minilm(
    built: Built, embedder: OnnxEmbedder, static_table: StaticTable
) -> None:
    static = StaticEmbedder(static_table, built.tokenizer)
    texts = [
        "what is the balance of my checking account",
        "book a table for two at an italian restaurant",
        "prove that the square root of two is irrational",
        "how do I reverse a linked list in python",
    ]
    queries = [
        "how much money is in my bank account",
        "reserve a dinner table tonight",
        "show that sqrt 2 cannot be a fraction",
        "python code to reverse a list",
    ]
    static_nearest = (static.embed(queries) @ static.embed(texts).T).argmax(axis=1)
    model_nearest = (embedder.embed(queries) @ embedder.embed(texts).T).argmax(axis=1)
    assert list(static_nearest) == list(model_nearest) == [0, 1, 2, 3]


def test_cli_build_also_reports_the_static_table(
    built: Built, static_table: StaticTable, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    model_build.configure(parser)
    args = ["--data-dir", str(built.data_dir), "--quantize", "none"]
    assert model_build.run(parser.parse_args(args)) == 0
    assert static_table.fingerprint in capsys.readouterr().out

"""Stage 1's static table: distillation, SIF weights, files, fingerprints, embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from sidecar.errors import EmbedderError
from sidecar.semantic import model_store
from sidecar.semantic.static_embedder import (
    LENGTH_SCALE,
    StaticEmbedder,
    StaticTable,
    TokenTeacher,
    distill_table,
    load_table,
    save_table,
    special_token_frame,
    zipf_sif_weights,
)
from tests.fakes import HashEmbedder, TokenHashEmbedder, write_word_tokenizer


@pytest.fixture
def teacher(tmp_path: Path) -> TokenHashEmbedder:
    return TokenHashEmbedder(write_word_tokenizer(tmp_path / "tokenizer.json"))


def test_the_template_frame_is_found_from_the_tokenizer(teacher: TokenHashEmbedder) -> None:
    tokenizer = Tokenizer.from_file(str(teacher.tokenizer_path))
    assert special_token_frame(tokenizer) == ([2], [3])  # [CLS] text [SEP]


def test_sif_weights_follow_the_vocabulary_rank() -> None:
    weights = zipf_sif_weights(1000, 1e-4)
    assert weights.shape == (1000,)
    assert np.all(np.diff(weights) > 0)  # a later (rarer) token weighs more
    assert 0 < weights[0] < weights[-1] < 1


def test_distilling_runs_every_token_once_and_keeps_the_principal_axes(
    teacher: TokenHashEmbedder,
) -> None:
    vocab = Tokenizer.from_file(str(teacher.tokenizer_path)).get_vocab_size()
    table = distill_table(teacher, dims=8, batch=7)
    assert table.vectors.shape == (vocab, 8) and table.vectors.dtype == np.int8
    assert table.scales.shape == table.weights.shape == (vocab,)
    assert table.source == teacher.fingerprint
    # PCA axes are ordered: the first carries the most variance.
    rows = table.vectors * table.scales[:, None].astype(np.float64)
    assert np.all(np.diff(rows.var(axis=0)) <= 1e-3)
    assert np.abs(table.vectors).max() == 127  # each row uses the whole int8 range
    assert table.fingerprint == distill_table(teacher, dims=8, batch=64).fingerprint
    assert table.fingerprint != distill_table(teacher, dims=6).fingerprint


def test_a_static_embedding_is_the_weighted_mean_of_token_rows(
    teacher: TokenHashEmbedder,
) -> None:
    table = distill_table(teacher, dims=8)
    static = StaticEmbedder(table, teacher.tokenizer_path)
    ids = Tokenizer.from_file(str(teacher.tokenizer_path)).encode("hello there").ids[1:-1]
    factors = (table.weights * table.scales)[ids, None]
    expected = (factors * table.vectors[ids].astype(np.float32)).sum(axis=0)
    row = static.embed_one("Hello there")
    assert static.dim == len(row) == 9  # the table's 8 axes, then the length column
    assert row[:-1] == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)
    assert row[-1] == pytest.approx(LENGTH_SCALE * np.log1p(2))
    batch = static.embed(["Hello there", "", "prove the theorem"])
    assert batch[0] == pytest.approx(row)
    assert not batch[1].any()  # no tokens: a zero row, not NaN
    assert np.linalg.norm(batch[2][:-1]) == pytest.approx(1.0, abs=1e-5)
    assert batch[2][-1] > batch[0][-1]  # three tokens are longer than two
    with pytest.raises(TypeError):
        static.embed("one string")


def test_stage1_neighbours_agree_with_the_teacher(teacher: TokenHashEmbedder) -> None:
    static = StaticEmbedder(distill_table(teacher), teacher.tokenizer_path)
    texts = ["hello there friend", "prove the lemma rigorously", "write code in rust"]
    queries = ["hi there friend", "formal proof of the lemma", "fix code in python"]
    sims = static.embed(queries)[:, :-1] @ static.embed(texts)[:, :-1].T  # cosines
    assert (sims.argmax(axis=1) == [0, 1, 2]).all()


def test_a_saved_table_loads_whole_and_refuses_another_teacher(
    teacher: TokenHashEmbedder, tmp_path: Path
) -> None:
    table = distill_table(teacher, dims=8)
    path = tmp_path / "static" / "t.npz"
    save_table(table, path)
    loaded = load_table(path, expected_source=teacher.fingerprint)
    assert loaded.fingerprint == table.fingerprint
    assert [p.name for p in path.parent.iterdir()] == ["t.npz"]  # no temp file left
    with pytest.raises(EmbedderError, match="distilled from"):
        load_table(path, expected_source="onnx:another")
    path.write_bytes(b"not a table")
    with pytest.raises(EmbedderError, match="unreadable"):
        load_table(path)


def test_a_table_that_does_not_fit_the_tokenizer_is_refused(
    teacher: TokenHashEmbedder, tmp_path: Path
) -> None:
    table = distill_table(teacher, dims=8)
    short = StaticTable(
        table.vectors[:-1], table.scales[:-1], table.weights[:-1], table.source, table.sif
    )
    with pytest.raises(EmbedderError, match="rows"):
        StaticEmbedder(short, teacher.tokenizer_path)


def test_the_store_distils_once_then_loads(teacher: TokenHashEmbedder, tmp_path: Path) -> None:
    assert isinstance(teacher, TokenTeacher) and not isinstance(HashEmbedder(), TokenTeacher)
    first = model_store.ensure_static_table(teacher, tmp_path)
    path = model_store.static_table_path(tmp_path, teacher.fingerprint)
    stamp = path.stat().st_mtime_ns
    static = model_store.load_static_embedder(teacher, tmp_path)
    assert static.fingerprint == first.fingerprint and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"damaged")  # a broken cache is rebuilt, not trusted
    assert model_store.ensure_static_table(teacher, tmp_path).fingerprint == first.fingerprint

"""The semantic composition root: the stage-1 embedder and the cached default index."""

from __future__ import annotations

from pathlib import Path

from sidecar.config.settings import SemanticSettings
from sidecar.serving.composition import default_index, make_static
from tests.fakes import HashEmbedder, TokenHashEmbedder, write_jsonl, write_word_tokenizer

SMALL = ["hello there", "hi friend", "good morning", "hey thanks", "hi there"]
HARD = ["prove the theorem", "formal proof", "prove the lemma", "proof of a bound", "prove it"]
ROWS = [{"text": t, "route": "small", "output_tokens": 20} for t in SMALL] + [
    {"text": t, "route": "frontier", "output_tokens": 900} for t in HARD
]


def test_stage1_follows_the_setting_and_the_embedder(tmp_path: Path) -> None:
    teacher = TokenHashEmbedder(write_word_tokenizer(tmp_path / "tokenizer.json"))
    on = SemanticSettings(data_dir=tmp_path)
    static = make_static(on, teacher)
    assert static is not None and static.fingerprint.startswith("static:")
    assert make_static(on.model_copy(update={"stage1": False}), teacher) is None
    assert make_static(on, HashEmbedder()) is None  # cannot teach a table: no stage 1


def test_the_default_index_is_cached_per_static_table(tmp_path: Path) -> None:
    teacher = TokenHashEmbedder(write_word_tokenizer(tmp_path / "tokenizer.json"))
    settings = SemanticSettings(
        data_dir=tmp_path, exemplars=write_jsonl(tmp_path / "ex.jsonl", ROWS)
    )
    static = make_static(settings, teacher)
    assert static is not None
    first = default_index(settings, teacher, static)
    assert first.heads is not None and first.heads.stage1 is not None
    cached = sorted((tmp_path / "indexes").iterdir())
    again = default_index(settings, teacher, static)
    assert sorted((tmp_path / "indexes").iterdir()) == cached  # loaded, not rebuilt
    assert again.heads is not None and again.heads.static_fingerprint == static.fingerprint
    without = default_index(settings, teacher, None)
    assert without.heads is not None and without.heads.stage1 is None
    assert len(list((tmp_path / "indexes").iterdir())) == 2

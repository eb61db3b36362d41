"""The cascade's memory of escalated prompts: recalled by similarity, bounded, kept, reversible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.cascade.memory import MEMORY_FORMAT, CascadeMemory, forget
from sidecar.cli import main as cli_main
from sidecar.errors import IndexLoadError

DIM = 8


def unit(*values: float) -> npt.NDArray[np.float32]:
    row = np.zeros(DIM, dtype=np.float32)
    row[: len(values)] = values
    return row / np.linalg.norm(row)


def test_a_close_prompt_is_recalled_with_its_tier_and_a_far_one_is_not() -> None:
    memory = CascadeMemory(fingerprint="f", dim=DIM, similarity=0.9)
    assert memory.recall(unit(1)) is None
    memory.remember(unit(1, 0.1), "mid")
    memory.remember(unit(0, 1), "frontier")
    recalled = memory.recall(unit(1))
    assert recalled is not None and recalled[0] == "mid" and recalled[1] > 0.99
    assert memory.recall(unit(1, 1)) is None  # cosine 0.77: not similar enough
    assert memory.recall(unit(0, 1, 0.2))[0] == "frontier"  # type: ignore[index]
    memory.remember(np.ones(DIM + 1, dtype=np.float32), "mid")  # another width: ignored
    assert len(memory) == 2


def test_the_oldest_is_forgotten_first(tmp_path: Path) -> None:
    path = tmp_path / "memory.jsonl"
    memory = CascadeMemory(fingerprint="f", dim=DIM, max_entries=2, path=path)
    for i, tier in enumerate(("small", "mid", "frontier")):
        memory.remember(unit(*([0.0] * i), 1), tier)
    assert len(memory) == 2 and memory.recall(unit(1)) is None  # the first one is gone
    reloaded = CascadeMemory.load(path, fingerprint="f", dim=DIM, max_entries=2)
    assert len(reloaded) == 2 and reloaded.recall(unit(0, 0, 1))[0] == "frontier"  # type: ignore[index]


def test_the_file_holds_vectors_and_tiers_never_text_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "memory.jsonl"
    memory = CascadeMemory(fingerprint="emb-1", dim=DIM, max_entries=3, path=path)
    for i in range(10):
        memory.remember(unit(1, i / 10), "mid")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {"format": MEMORY_FORMAT, "embedder": "emb-1", "dim": DIM}
    assert len(lines) - 1 <= 2 * 3  # compacted when it held twice the bound
    assert all(set(json.loads(line)) == {"tier", "vector"} for line in lines[1:])


def test_another_embedders_memory_is_refused_and_junk_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "memory.jsonl"
    CascadeMemory(fingerprint="emb-1", dim=DIM, path=path).remember(unit(1), "mid")
    with pytest.raises(IndexLoadError, match="another embedder"):
        CascadeMemory.load(path, fingerprint="emb-2", dim=DIM)
    with path.open("a") as file:
        file.write('{"tier": "mid", "vector": "!!not base64"}\nnot json\n')
    assert len(CascadeMemory.load(path, fingerprint="emb-1", dim=DIM)) == 1
    (tmp_path / "other.jsonl").write_text("hello\n")
    with pytest.raises(IndexLoadError):
        CascadeMemory.load(tmp_path / "other.jsonl", fingerprint="emb-1", dim=DIM)


def test_forgetting_empties_the_file_and_the_cli_does_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "memory.jsonl"
    memory = CascadeMemory(fingerprint="f", dim=DIM, path=path)
    memory.remember(unit(1), "mid")
    memory.remember(unit(0, 1), "mid")
    assert cli_main.main(["cascade", "forget", "--memory", str(path)]) == 0
    assert "forgot 2 prompts" in capsys.readouterr().out
    assert len(CascadeMemory.load(path, fingerprint="f", dim=DIM)) == 0
    assert forget(tmp_path / "absent.jsonl") == 0
    (tmp_path / "not-memory.txt").write_text("keep me\n")
    with pytest.raises(IndexLoadError):
        forget(tmp_path / "not-memory.txt")
    assert (tmp_path / "not-memory.txt").read_text() == "keep me\n"

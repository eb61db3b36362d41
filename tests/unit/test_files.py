"""The atomic writers in sidecar/config/files.py: what a reader sees, and who may read it."""

from __future__ import annotations

import stat
from pathlib import Path

from sidecar.config.files import replace_directory, write_text_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_replaced_directory_is_whole_and_readable_by_other_users(tmp_path: Path) -> None:
    target = tmp_path / "index"
    replace_directory(target, lambda tmp: (tmp / "meta.json").write_text("one"))
    replace_directory(target, lambda tmp: (tmp / "meta.json").write_text("two"))
    assert (target / "meta.json").read_text() == "two"
    assert _mode(target) == 0o755  # not mkdtemp's 0700: a non-root server reads it
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temp or old dir left


def test_an_atomically_written_file_is_readable_by_other_users(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    write_text_atomically(path, "a: 1\n")
    assert path.read_text() == "a: 1\n" and _mode(path) == 0o644

"""Reading operator files (YAML mappings, JSONL rows) and writing result files atomically.

A read error is a ConfigError that names the file (and line) and what was expected of it;
a write error is an OutputError that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from sidecar.errors import ConfigError, OutputError


def read_yaml_mapping(path: Path, what: str, *, empty_ok: bool = False) -> dict[str, object]:
    """Parse a YAML file whose top level must be a mapping; an empty file is {} if allowed."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None and empty_ok:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping")
    return loaded


def read_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """Yield ("file:line", decoded row) for each non-blank line; ConfigError on bad JSON."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Have `write` fill a temp file beside `target`, then rename it into place.

    Readers (a watching sidecar, other replicas sharing a volume) see the whole old file
    or the whole new one, never half of one.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp creates 0600; caches are shared with other users
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    """Write a whole text file atomically (see `write_atomically`)."""
    write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_directory(target: Path, fill: Callable[[Path], object]) -> None:
    """Have `fill` populate a temp directory beside `target`, then swap it into place.

    A reader sees the old directory or the new one, whole: the old one is renamed aside
    and the new one renamed in, two atomic renames with nothing half-written between.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp"))
        # mkdtemp makes it 0700; the swapped-in directory must be readable like any
        # other (an image built as root is served by a non-root user).
        tmp.chmod(0o755)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    try:
        fill(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

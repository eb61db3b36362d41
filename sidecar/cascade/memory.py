"""Learning from outcomes: a prompt like one whose cheap answer was escalated skips the cheap try.

Theory. Every escalation is a labelled example bought at full price: this prompt needed
the next tier. The memory keeps the prompt's embedding (the router's MiniLM vector of
its routing text, unit length) with the tier that answered it, and a later prompt whose
cosine similarity to one of them reaches `similarity` goes straight to that tier, saving
the cheap call and its latency. It is opt-in (`cascade.learn.enabled`), because it costs
one encoder call per cascading request, and because what it learns comes from traffic.

Bounded: at most `max_entries`, the oldest forgotten first. Persisted: one JSON line per
entry after a header naming the embedder (a file written by another embedder is refused,
its vectors would mean nothing), appended as escalations happen and compacted when it
holds twice the bound. Only vectors and tiers are stored, never prompt text. Reversible:
`inference-router cascade forget` empties it, or delete the file; the running sidecar
reads it only at start.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sidecar.config.files import write_text_atomically
from sidecar.errors import IndexLoadError

log = logging.getLogger(__name__)

MEMORY_FORMAT = "inference-router-cascade-memory/1"


class CascadeMemory:
    """Vectors of prompts that needed a heavier tier, and that tier."""

    def __init__(
        self,
        *,
        fingerprint: str,
        dim: int,
        similarity: float = 0.92,
        max_entries: int = 10_000,
        path: Path | None = None,
    ) -> None:
        self._fingerprint = fingerprint
        self._dim = dim
        self._similarity = similarity
        self._path = path
        self._entries: deque[tuple[npt.NDArray[np.float32], str]] = deque(maxlen=max_entries)
        self._lines_on_disk = 0
        self._matrix: npt.NDArray[np.float32] | None = None  # rebuilt lazily after a change

    def __len__(self) -> int:
        return len(self._entries)

    def recall(self, vector: npt.NDArray[np.float32]) -> tuple[str, float] | None:
        """The tier a similar prompt needed, and the similarity; None when none is close."""
        if not self._entries:
            return None
        if self._matrix is None:
            self._matrix = np.stack([row for row, _ in self._entries])
        similarities = self._matrix @ np.asarray(vector, dtype=np.float32)
        best = int(np.argmax(similarities))
        score = float(similarities[best])
        return (self._entries[best][1], score) if score >= self._similarity else None

    def remember(self, vector: npt.NDArray[np.float32], tier: str) -> None:
        """Keep one escalated prompt's vector; append it to the file when there is one."""
        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row.shape != (self._dim,):
            return
        self._entries.append((row, tier))
        self._matrix = None
        if self._path is None:
            return
        maxlen = self._entries.maxlen or len(self._entries)
        if self._lines_on_disk >= 2 * maxlen or not self._path.exists():
            self._rewrite(self._path)
            return
        with self._path.open("a", encoding="utf-8") as file:
            file.write(_line(row, tier))
        self._lines_on_disk += 1

    def _rewrite(self, path: Path) -> None:
        text = _header(self._fingerprint, self._dim) + "".join(
            _line(row, tier) for row, tier in self._entries
        )
        write_text_atomically(path, text)
        self._lines_on_disk = len(self._entries)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        fingerprint: str,
        dim: int,
        similarity: float = 0.92,
        max_entries: int = 10_000,
    ) -> CascadeMemory:
        """The memory kept in `path` (empty if the file does not exist yet)."""
        memory = cls(
            fingerprint=fingerprint,
            dim=dim,
            similarity=similarity,
            max_entries=max_entries,
            path=path,
        )
        if not path.exists():
            return memory
        header, lines = _read(path)
        if header.get("embedder") != fingerprint or header.get("dim") != dim:
            raise IndexLoadError(
                f"{path}: written with another embedder; its vectors mean nothing to this one "
                "(run `inference-router cascade forget` to start again)"
            )
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                raw = base64.b64decode(entry["vector"], validate=True)
                row = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
                tier = str(entry["tier"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s:%d: skipped an unreadable entry (%s)", path, number, exc)
                continue
            if row.shape == (dim,):
                memory._entries.append((row, tier))
        memory._lines_on_disk = len(lines) - 1
        log.info("cascade memory: %d prompts from %s", len(memory), path)
        return memory


def forget(path: Path) -> int:
    """Empty the memory file, keeping its header; returns how many entries were dropped."""
    if not path.exists():
        return 0
    _, lines = _read(path)  # refuses (and leaves alone) a file that is not a memory
    write_text_atomically(path, lines[0] + "\n")
    return len(lines) - 1


def _read(path: Path) -> tuple[dict[str, object], list[str]]:
    """A memory file's header and lines (the header first); IndexLoadError if it is not one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexLoadError(f"{path}: not a readable cascade memory: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != MEMORY_FORMAT:
        raise IndexLoadError(f"{path}: not a {MEMORY_FORMAT} file")
    return header, lines


def _header(fingerprint: str, dim: int) -> str:
    return json.dumps({"format": MEMORY_FORMAT, "embedder": fingerprint, "dim": dim}) + "\n"


def _line(row: npt.NDArray[np.float32], tier: str) -> str:
    vector = base64.b64encode(row.astype(np.float16).tobytes()).decode()
    return json.dumps({"tier": tier, "vector": vector}) + "\n"

"""Embedding a whole corpus offline: many texts in batches, with a progress bar on stderr.

Used when building an index and when classifying a test set. The serving path embeds
one prompt at a time through `sidecar.semantic.micro_batcher` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from sidecar.semantic.embedder import Embedder


def embed_corpus(
    texts: Sequence[str], embedder: Embedder, *, batch_size: int = 64, progress: bool = False
) -> npt.NDArray[np.float32]:
    """Embed many texts, shortest first (less padding), with an optional stderr progress bar."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    bar = ProgressBar("embedding", len(texts)) if progress else None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = embedder.embed([texts[i] for i in chunk])
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


class ProgressBar:
    """A one-line text bar on stderr, redrawn at most once per percent."""

    def __init__(self, label: str, total: int) -> None:
        self._label, self._total, self._done, self._shown = label, max(total, 1), 0, -1

    def update(self, n: int) -> None:
        self._done += n
        percent = 100 * self._done // self._total
        if percent != self._shown:
            self._shown = percent
            filled = percent * 30 // 100
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r{self._label} [{bar}] {self._done}/{self._total}")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()

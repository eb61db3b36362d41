"""Stage 1: static token embeddings distilled from the sentence encoder (model2vec's method).

Theory. A transformer's cost is its forward pass; a bag of token vectors costs a table
lookup. We distil one from the encoder the router already has: every vocabulary token
`t` is run through the ONNX graph once, as the sentence `[CLS] t [SEP]` (whatever
special tokens the tokenizer's template adds), and its pooled, normalised output is
that token's vector. The 30,522 MiniLM vectors are centred and reduced by PCA to
`dims` (256) axes, which keeps the directions the encoder actually uses and drops a
third of the lookups' memory traffic. A prompt is then embedded as the weighted mean of
its tokens' vectors (no special tokens), L2-normalised: tokenizer plus `ids -> rows ->
weighted sum`, tens of microseconds instead of milliseconds. Rows are stored as int8
with one scale per row (7.8 MB for MiniLM's vocabulary instead of 31 MB of float32):
on CLINC150 the stage-1 head's accuracy is the same as from float16 rows (0.936 vs 0.934).

Weights are SIF-style, `a / (a + p(t))`, so frequent tokens count for less. The
frequencies come from a reference corpus the table already carries: a WordPiece
vocabulary is built most-frequent-first, so a token's id ranks its frequency in the
encoder's own training text (Zipf's law, `p ~ 1 / (rank + 2)`, as model2vec does).
Frequencies counted on exemplars were worse: they also down-weight each route's own
keywords (docs/EVALUATION.md has the numbers). The weights are kept beside the vectors,
not folded into them, so the table is the plain distillation.

A mean forgets how long the prompt was, and length says something about how hard a
request is: the stage-1 row ends with one more number, `LENGTH_SCALE * log(1 + tokens)`.
On the shipped small/mid/frontier exemplars it lifts the stage-1 head's cross-validated
accuracy from 0.856 to 0.886 (log loss 0.375 -> 0.300); on CLINC150's intents it changes
nothing measurable. So a stage-1 row is `dims + 1` wide: a unit vector, then the length.

The table is built once into the data directory (like the ONNX model) and written
atomically. Its `fingerprint` names everything that decides it (the table format and
method, the teacher's fingerprint, which covers model and tokenizer bytes, the width,
the SIF coefficient and the vocabulary size), not the computed numbers, which may
differ in the last bits between CPUs; a head trained on one table records it, and an
index whose head names a different table is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from sidecar.config.files import write_atomically
from sidecar.errors import EmbedderError
from sidecar.semantic.corpus import ProgressBar
from sidecar.semantic.embedder import read_tokenizer

log = logging.getLogger(__name__)

TABLE_FORMAT = 1
DEFAULT_DIMS = 256  # 128 lost 2 points of CLINC150 accuracy; 384 (no reduction) gained none
DEFAULT_SIF = 1e-4  # model2vec's coefficient for Zipf-rank frequencies
DISTILL_BATCH = 1024
# The length column's scale beside a unit vector; shipped-exemplar CV accuracy of the
# stage-1 head at 0.1 / 0.2 / 0.4: 0.866 / 0.886 / 0.885 (0.856 without the column).
LENGTH_SCALE = 0.2


@runtime_checkable
class TokenTeacher(Protocol):
    """The sentence encoder a table is distilled from (OnnxEmbedder is one)."""

    @property
    def fingerprint(self) -> str:
        """Stable id of the encoder; the table records it."""
        ...

    @property
    def tokenizer_path(self) -> Path:
        """The encoder's tokenizer.json (the table has one row per vocabulary id)."""
        ...

    def embed_ids(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Rows of token ids, special tokens included, to L2-normalised embeddings."""
        ...


@dataclass(frozen=True)
class StaticTable:
    """One reduced vector and one SIF weight per vocabulary id."""

    vectors: npt.NDArray[np.int8]  # (vocab, dims); a row times its scale is the vector
    scales: npt.NDArray[np.float32]  # (vocab,)
    weights: npt.NDArray[np.float32]  # (vocab,) SIF weights
    source: str  # the teacher's fingerprint
    sif: float

    @property
    def dims(self) -> int:
        """Width of a stage-1 embedding."""
        return int(self.vectors.shape[1])

    @property
    def vocab_size(self) -> int:
        """Rows of the table: the tokenizer's vocabulary size."""
        return int(self.vectors.shape[0])

    @cached_property
    def fingerprint(self) -> str:
        """Hash of format, method, teacher and parameters; heads record it."""
        digest = hashlib.sha256()
        for part in (
            f"static-table/{TABLE_FORMAT}".encode(),
            self.source.encode(),
            f"tokens=[frame]t[frame];pca=centred;dims={self.dims};vocab={self.vocab_size};"
            f"quant=int8-row;sif={self.sif!r};weights=zipf-rank;pooling=weighted-mean;"
            f"normalise=l2;length=log1p*{LENGTH_SCALE!r}".encode(),
        ):
            digest.update(len(part).to_bytes(8, "big") + part)
        return f"static:{digest.hexdigest()}"


def special_token_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's template puts before and after a sentence ([CLS] / [SEP])."""
    probe = "hello"
    plain = tokenizer.encode(probe, add_special_tokens=False).ids
    framed = tokenizer.encode(probe, add_special_tokens=True).ids
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    raise EmbedderError("cannot find where the tokenizer's template puts the sentence")


def zipf_sif_weights(vocab_size: int, sif: float) -> npt.NDArray[np.float32]:
    """`a / (a + p)` with `p ~ 1 / (id + 2)`: the vocabulary order as a frequency ranking."""
    inverse_rank = 1.0 / np.arange(2, vocab_size + 2, dtype=np.float64)
    p = inverse_rank / inverse_rank.sum()
    return np.asarray(sif / (sif + p), dtype=np.float32)


def distill_table(
    teacher: TokenTeacher,
    *,
    dims: int = DEFAULT_DIMS,
    sif: float = DEFAULT_SIF,
    batch: int = DISTILL_BATCH,
    progress: bool = False,
) -> StaticTable:
    """Run every vocabulary token through the teacher once, then PCA to `dims` axes."""
    tokenizer = _plain_tokenizer(teacher.tokenizer_path, max_tokens=None)
    before, after = special_token_frame(tokenizer)
    vocab = tokenizer.get_vocab_size()
    ids = np.empty((vocab, len(before) + 1 + len(after)), dtype=np.int64)
    ids[:, : len(before)] = before
    ids[:, len(before)] = np.arange(vocab)
    ids[:, len(before) + 1 :] = after
    bar = ProgressBar("distilling", vocab) if progress else None
    parts = []
    for start in range(0, vocab, batch):
        parts.append(teacher.embed_ids(ids[start : start + batch]))
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    rows = np.concatenate(parts).astype(np.float64)
    centred = rows - rows.mean(axis=0)
    # The right singular vectors of the centred rows are the principal axes.
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    keep = min(dims, axes.shape[0])
    reduced = centred @ axes[:keep].T
    scales = np.abs(reduced).max(axis=1) / 127.0
    quantised = np.round(reduced / np.maximum(scales, 1e-12)[:, None])
    return StaticTable(
        vectors=quantised.astype(np.int8),
        scales=scales.astype(np.float32),
        weights=zipf_sif_weights(vocab, sif),
        source=teacher.fingerprint,
        sif=sif,
    )


def save_table(table: StaticTable, path: Path) -> None:
    """Write the table as one .npz, atomically (readers see the old file or the new one)."""
    meta = {"format": TABLE_FORMAT, "source": table.source, "sif": table.sif}

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            vectors=table.vectors,
            scales=table.scales,
            weights=table.weights,
            meta=np.array(json.dumps(meta)),
        )
        tmp.write_bytes(buffer.getvalue())

    write_atomically(path, write)


def load_table(path: Path, *, expected_source: str | None = None) -> StaticTable:
    """Read a table saved by `save_table`; EmbedderError says what is wrong with it."""
    try:
        # An open file, not a path: np.load leaks its own handle when the zip is broken.
        with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            vectors = np.asarray(data["vectors"], dtype=np.int8)
            scales = np.asarray(data["scales"], dtype=np.float32)
            weights = np.asarray(data["weights"], dtype=np.float32)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise EmbedderError(f"static table {path}: unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != TABLE_FORMAT:
        raise EmbedderError(
            f"static table {path}: format {meta.get('format') if isinstance(meta, dict) else '?'}"
            f", this router reads {TABLE_FORMAT}; rebuild it with `inference-router model build`"
        )
    if vectors.ndim != 2 or not weights.shape == scales.shape == (vectors.shape[0],):
        raise EmbedderError(f"static table {path}: vectors, scales and weights do not match")
    source = str(meta.get("source"))
    if expected_source is not None and source != expected_source:
        raise EmbedderError(
            f"static table {path} was distilled from {source}, not from the running embedder "
            f"{expected_source}; rebuild it with `inference-router model build`"
        )
    return StaticTable(
        vectors=vectors, scales=scales, weights=weights, source=source, sif=float(meta["sif"])
    )


class StaticEmbedder:
    """Stage-1 rows: tokenize, look up, weighted mean, normalise, then the length. No model call."""

    def __init__(self, table: StaticTable, tokenizer_path: Path, *, max_tokens: int = 128) -> None:
        self._tokenizer = _plain_tokenizer(tokenizer_path, max_tokens=max_tokens)
        if self._tokenizer.get_vocab_size() != table.vocab_size:
            raise EmbedderError(
                f"static table has {table.vocab_size} rows but tokenizer {tokenizer_path} has "
                f"{self._tokenizer.get_vocab_size()} tokens; rebuild the table"
            )
        self._vectors = table.vectors
        # SIF weight and dequantisation scale fold into one factor per token.
        self._factors = table.weights * table.scales
        self._fingerprint = table.fingerprint
        self._dim = table.dims + 1

    @property
    def dim(self) -> int:
        """Width of one row: the table's width plus the length column."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """The table's fingerprint: heads trained on this embedder record it."""
        return self._fingerprint

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        """One text to a stage-1 row (a zero row if it has no tokens)."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return self._pool(np.asarray(ids, dtype=np.int64))

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` into shape (len(texts), dim): unit vectors, then the length column."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, encoding in enumerate(
            self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ):
            out[i] = self._pool(np.asarray(encoding.ids, dtype=np.int64))
        return out

    def _pool(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        row = np.zeros(self._dim, dtype=np.float32)
        if len(ids) == 0:
            return row
        summed = self._factors[ids] @ self._vectors[ids].astype(np.float32)
        norm = float(np.linalg.norm(summed))
        row[:-1] = summed / norm if norm > 0 else summed
        row[-1] = LENGTH_SCALE * math.log1p(len(ids))
        return row


def _plain_tokenizer(path: Path, *, max_tokens: int | None) -> Tokenizer:
    """The encoder's tokenizer without padding (and truncated to `max_tokens` if given)."""
    tokenizer = read_tokenizer(path)
    tokenizer.no_padding()
    if max_tokens is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer

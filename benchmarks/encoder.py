"""The MiniLM encoder alone: fp32 and int8 graphs against onnxruntime's transformer fusions.

Theory. A forward pass for a short prompt is ~0.55 GFLOP of matrix products, which ONNX
Runtime already runs near this CPU's peak; what a fusion can save is the rest (bias adds,
layer norms, transposes, the per-node dispatch), a fifth of the time at most. So the
question is empirical, and small differences drown in a busy machine's noise: the graphs
here run in one process, on the same prompts, in alternating order within every round, so
a noisy neighbour weighs on each alike, and each call's process CPU time (both intra-op
threads) is reported beside its wall time. Variants: the graph as `model build` writes it
(fp32), its int8 copy (sidecar/semantic/int8.py: what `quantize: auto` runs with VNNI), the
fp32 graph through `onnxruntime.transformers.optimizer` (BERT fusions:
SkipLayerNormalization, BiasGelu; its Attention fusion looks for an explicit 1/sqrt(d)
scale, which our graph folds into the query weights), and any other build given with
`--compare NAME=PATH` (e.g. an older revision still in the data directory). For each, the
lowest cosine to the sentence-transformers reference (tests/fixtures/minilm_reference.json)
is reported: a fusion is only worth adopting at 0.9999 or more. int8 moves the vectors
further (about 0.99), so what decides for it is routing quality, measured end to end
(`benchmarks.quality`, docs/EVALUATION.md).

It also measures what the session costs in resident memory when made from the model's
path and, as the sidecar used to, from its bytes (onnxruntime keeps those for the
session's life), each in a fresh process.

Run: .venv/bin/python -m benchmarks.encoder [--rounds 400] [--threads 2] [--compare old=PATH.onnx]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.run import prompts, resident_mib
from sidecar.semantic.embedder import OnnxEmbedder
from sidecar.semantic.model_store import (
    DEFAULT_TOKENIZER_NAME,
    default_data_dir,
    ensure_default_model,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "fixtures" / "minilm_reference.json"
OUT = ROOT / "bench-results" / "encoder.json"
BATCH = 8


@dataclass
class Timings:
    """Per-call wall and process-CPU milliseconds of one variant at one batch size."""

    wall: list[float]
    cpu: list[float]

    def summary(self) -> dict[str, float]:
        """Median and p99 wall time, median CPU time, in milliseconds."""
        wall = np.array(self.wall)
        return {
            "wall_p50_ms": float(np.median(wall)),
            "wall_p99_ms": float(np.percentile(wall, 99)),
            "cpu_p50_ms": float(np.median(self.cpu)),
        }


def fuse(model: Path, out: Path) -> dict[str, int]:
    """Write `model` through the BERT optimizer; returns how many of each fused op it made."""
    from onnxruntime.transformers import optimizer

    # opt_level 0: only the optimizer's own fusions; the session adds ORT_ENABLE_ALL's.
    optimized = optimizer.optimize_model(
        str(model), model_type="bert", num_heads=12, hidden_size=384, opt_level=0
    )
    optimized.save_model_to_file(str(out))
    stats = optimized.get_fused_operator_statistics()
    return {op: int(count) for op, count in stats.items() if count}


def reference_cosine(model: Path, tokenizer: Path) -> float:
    """Lowest cosine between `model`'s embeddings and sentence-transformers' reference ones."""
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    vectors = np.array([case["vector"] for case in reference["cases"]])
    embedder = OnnxEmbedder(model, tokenizer, max_tokens=reference["max_seq_length"])
    rows = embedder.embed([case["text"] for case in reference["cases"]])
    return float(((rows * vectors).sum(axis=1) / np.linalg.norm(vectors, axis=1)).min())


def race(
    embedders: dict[str, OnnxEmbedder], rounds: int, batch: int
) -> dict[str, dict[str, float]]:
    """Every variant embeds the same batch each round, in a shuffled order."""
    texts = prompts(rounds * batch, seed=11)
    timings = {name: Timings([], []) for name in embedders}
    order = list(embedders)
    shuffle = random.Random(5).shuffle
    for embedder in embedders.values():
        embedder.embed(texts[:batch])  # warm: first runs allocate the arena
    for start in range(0, len(texts), batch):
        shuffle(order)
        for name in order:
            cpu, wall = time.process_time(), time.perf_counter()
            embedders[name].embed(texts[start : start + batch])
            timings[name].wall.append(1000 * (time.perf_counter() - wall))
            timings[name].cpu.append(1000 * (time.process_time() - cpu))
    return {name: timing.summary() for name, timing in timings.items()}


def session_rss(model: Path, from_bytes: bool) -> dict[str, float]:
    """In a fresh process: RSS before and after making a session, and the peak."""
    before = resident_mib(os.getpid())
    options = ort.SessionOptions()
    source: str | bytes = model.read_bytes() if from_bytes else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    del source
    after = resident_mib(os.getpid())
    assert session.get_inputs()  # alive until measured
    return {"session_mib": after - before, "peak_mib": resident_mib(os.getpid(), "VmHWM")}


def _named_path(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise SystemExit(f"--compare wants NAME=PATH to an ONNX file, got {spec!r}")
    return name, Path(path)


def main() -> int:
    """Build or find the model, race the variants, measure memory, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="calls per variant and size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--compare", action="append", default=[], metavar="NAME=PATH", help="another model"
    )
    args = parser.parse_args()
    others = dict(_named_path(spec) for spec in args.compare)
    data_dir = default_data_dir() if args.data_dir is None else args.data_dir
    shipped = ensure_default_model(data_dir)
    int8 = ensure_default_model(data_dir, weights="int8")
    tokenizer = data_dir / DEFAULT_TOKENIZER_NAME
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        results["fused_ops"] = fuse(shipped, fused)
        models = {"fp32": shipped, "int8": int8, "ort_transformers_optimizer": fused, **others}
        results["reference_cosine_min"] = {
            name: reference_cosine(path, tokenizer) for name, path in models.items()
        }
        embedders = {
            name: OnnxEmbedder(path, tokenizer, threads=args.threads)
            for name, path in models.items()
        }
        results["one_prompt"] = race(embedders, args.rounds, 1)
        results[f"batch_{BATCH}"] = race(embedders, max(args.rounds // 4, 1), BATCH)
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, maxtasksperchild=1) as pool:
        results["session_memory"] = {
            name: pool.apply(session_rss, (shipped, from_bytes))
            for name, from_bytes in (("from_path", False), ("from_bytes", True))
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Smoothing before int8 quantisation, on a tiny encoder: exact, shared, down-projections kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sidecar.semantic.int8 import activation_maxima, quantize_int8, smooth, weighted_matmuls
from sidecar.semantic.minilm_graph import locate_packaged_minilm

WIDTH = 6
OUT = 3  # the last product narrows (a down-projection, like the feed-forward's second)
OUTLIER = 2  # the embedding channel that runs 40x hotter than the others


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    """The BERT-uncased tokenizer.json shipped with the MiniLM weights (no model build)."""
    return locate_packaged_minilm() / "tokenizer.json"


def tiny_encoder() -> onnx.ModelProto:
    """Token rows → two products sharing their input (like query and key) → a narrowing one."""
    rng = np.random.default_rng(3)
    table = rng.normal(size=(30522, WIDTH)).astype(np.float32)
    table[:, OUTLIER] *= 40
    weights = {f"w{i}": rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) for i in range(2)}
    weights["w2"] = rng.normal(size=(WIDTH, OUT)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["states"]),
        helper.make_node("MatMul", ["states", "w0"], ["q"], name="query"),  # named, as in
        helper.make_node("MatMul", ["states", "w1"], ["k"], name="key"),  # MiniLM's graph
        helper.make_node("Add", ["q", "k"], ["qk"]),
        helper.make_node("MatMul", ["qk", "w2"], ["out"], name="down"),
        helper.make_node("Identity", ["attention_mask"], ["mask_echo"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
            for n in ("input_ids", "attention_mask")
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", OUT]),
            helper.make_tensor_value_info("mask_echo", TensorProto.INT64, ["b", "s"]),
        ],
        [numpy_helper.from_array(table, "table")]
        + [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = np.array([ids], dtype=np.int64)
    out: np.ndarray = session.run(["out"], {"input_ids": feed, "attention_mask": feed * 0 + 1})[0]
    return out


TEXTS = ["book a table for two", "prove that root two is irrational", "hello"]


def test_maxima_are_per_channel_over_the_texts(tokenizer: Path) -> None:
    maxima = activation_maxima(tiny_encoder(), tokenizer, TEXTS)
    assert sorted(maxima) == ["states"]  # one per quantised input; w2 (narrowing) stays fp32
    states = maxima["states"]
    assert states.shape == (WIDTH,) and int(np.argmax(states)) == OUTLIER
    assert states[OUTLIER] > 10 * np.median(states)


def test_smoothing_keeps_the_fp32_model_exact_and_flattens_the_hot_channel(
    tokenizer: Path,
) -> None:
    model = tiny_encoder()
    before = run(model, [101, 2000, 3000, 102])
    maxima = activation_maxima(model, tokenizer, TEXTS)
    smooth(model, maxima)
    np.testing.assert_allclose(run(model, [101, 2000, 3000, 102]), before, rtol=1e-4, atol=1e-4)
    # One Mul per smoothed input, shared by the products reading it.
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert [n.input[0] for n in muls] == ["states"]
    assert {n.input[0] for n in weighted_matmuls(model)} == {"states.smoothed", "qk"}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inverse = weights["states.smoothing"]
    flattened = maxima["states"] * inverse
    assert flattened.max() / np.median(flattened) < maxima["states"].max() / np.median(
        maxima["states"]
    )


def test_quantized_copy_runs_close_to_fp32(tokenizer: Path, tmp_path: Path) -> None:
    fp32 = tmp_path / "tiny.onnx"
    onnx.save(tiny_encoder(), str(fp32))
    out = tmp_path / "tiny.int8.onnx"
    quantize_int8(fp32, out, tokenizer, TEXTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.int8.onnx", "tiny.onnx"]
    quantized = onnx.load(str(out))
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("MatMul") == 1  # "down" kept fp32
    ids = [101, 2000, 3000, 102]
    a, b = run(onnx.load(str(fp32)), ids).ravel(), run(quantized, ids).ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99

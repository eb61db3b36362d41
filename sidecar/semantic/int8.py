"""The int8 MiniLM: activations smoothed into the weights, then dynamic quantisation.

onnxruntime's dynamic quantisation stores each weight matrix as int8 (one scale per output
channel) and quantises each matrix product's input on the fly with one scale for the
whole tensor. MiniLM's layer norms and GELUs put a few channels far above the rest: on
the shipped exemplars channel 99 of the attention block's layer norm reaches 28 where the
median channel stays under 2. One scale per tensor spends most of the 256 levels on those
few channels and blurs the others: plain int8 kept 89 % of each prompt's ten nearest
neighbours (fp32's), mean cosine to fp32 0.993.

Two measured remedies (docs/EVALUATION.md, "int8 MiniLM", has every variant tried):
- Smoothing (SmoothQuant, Xiao et al. 2022) moves that range into the weights first:
  X·W = (X·diag(1/s))·(diag(s)·W), exact in real arithmetic, with, per input channel j,
  s_j = max|X_j|^alpha / max|W_j|^(1-alpha), the maxima from running the fp32 model over
  the shipped exemplars. alpha 0.8 measured best of 0.5-1.0: 94 % of neighbours kept,
  cosine 0.997, at the same speed (one elementwise Mul per smoothed input).
- The feed-forward down-projections (GELU's output, 1,536 wide, times W) stay fp32:
  GELU's long tail is where int8 lost most. 97 % of neighbours kept, cosine 0.9993, and
  the only int8 variant tried that kept CLINC150's out-of-scope recall at 0.85; 1.9x
  faster than fp32 per short prompt instead of 3.6x.

The int8 file's bytes are its embedder fingerprint, and the calibration run's last bits
differ between CPU types, so machines of different types build different int8 files. An
index is refused by another int8 file with a clear error, as it is between fp32 and int8:
build indexes against the data directory that serves them (the image bakes its own), or
use `quantize: none` for portable ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tokenizers import Tokenizer

ALPHA = 0.8
CALIBRATION_TOKENS = 128

Maxima = dict[str, npt.NDArray[np.float32]]


def quantize_int8(
    fp32_path: Path, out_path: Path, tokenizer_path: Path, texts: Iterable[str]
) -> None:
    """Write the smoothed, dynamically int8-quantised copy of the fp32 model at `fp32_path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    kept = [n.name for n in weighted_matmuls(model) if is_down_projection(model, n)]
    smooth(model, activation_maxima(model, tokenizer_path, texts))
    smoothed = out_path.with_name(out_path.name + ".smoothed")
    try:
        onnx.save(model, str(smoothed))
        # Signed weights: VNNI's u8s8 instructions (unsigned ones take a slower path).
        quantize_dynamic(
            smoothed,
            out_path,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        smoothed.unlink(missing_ok=True)


def weighted_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMuls whose second input is a weight: what dynamic quantisation turns to int8."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def quantized_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The weighted MatMuls made int8: all but the down-projections."""
    return [n for n in weighted_matmuls(model) if not is_down_projection(model, n)]


def is_down_projection(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """A weighted MatMul with more inputs than outputs: the feed-forward block's second one."""
    (weight,) = [t for t in model.graph.initializer if t.name == node.input[1]]
    return weight.dims[0] > weight.dims[1]


def activation_maxima(model: onnx.ModelProto, tokenizer_path: Path, texts: Iterable[str]) -> Maxima:
    """Per channel, the largest |value| each quantised MatMul's input takes over `texts`."""
    inputs = sorted({node.input[0] for node in quantized_matmuls(model)})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(CALIBRATION_TOKENS)
    maxima = {name: np.zeros(0, np.float32) for name in inputs}
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        for name, values in zip(inputs, session.run(inputs, feeds), strict=True):
            row = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
            maxima[name] = row if maxima[name].size == 0 else np.maximum(maxima[name], row)
    return maxima


def smooth(model: onnx.ModelProto, maxima: Maxima, alpha: float = ALPHA) -> None:
    """Divide each quantised MatMul's input by s (a Mul node), multiply its weights' rows by s.

    MatMuls sharing an input (query, key, value) share one s, from their largest weights.
    Exact up to float rounding (1e-7 relative): the fp32 graph's outputs stay the same.
    """
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    quantized = quantized_matmuls(model)
    for name, activation in maxima.items():
        consumers = [n for n in quantized if n.input[0] == name]
        matrices = [numpy_helper.to_array(weights[n.input[1]]) for n in consumers]
        weight_max = np.max([np.abs(w).max(axis=1) for w in matrices], axis=0)
        raw = np.maximum(activation, 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        scale = raw.astype(np.float32)
        for node, matrix in zip(consumers, matrices, strict=True):
            scaled = (matrix * scale[:, None]).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
            node.input[0] = f"{name}.smoothed"
        inverse = f"{name}.smoothing"
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, inverse))
        first = min(list(model.graph.node).index(node) for node in consumers)
        mul = helper.make_node("Mul", [name, inverse], [f"{name}.smoothed"], name=inverse)
        model.graph.node.insert(first, mul)

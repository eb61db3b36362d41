"""The eval command end to end on small files, with a deterministic fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import evaluate, index_build
from sidecar.errors import ConfigError
from tests.fakes import (
    run_command_with_fake_embedder,
    run_command_with_fake_teacher,
    write_jsonl,
    write_word_tokenizer,
)


def _eval(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    return run_command_with_fake_embedder(evaluate.configure, evaluate.run, argv, monkeypatch)


def test_eval_command_on_route_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exemplars = write_jsonl(
        tmp_path / "ex.jsonl",
        [
            {"text": "book a flight to paris", "route": "travel"},
            {"text": "book a hotel in rome", "route": "travel"},
            {"text": "what is my bank balance", "route": "bank"},
            {"text": "transfer money from my bank", "route": "bank"},
            {"text": "tell me a joke about cats", "route": None},
        ],
    )
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"text": "book a flight to rome", "route": "travel"},
            {"text": "my bank balance please", "route": "bank"},
            {"text": "a joke about cats please", "route": None},
        ],
    )
    scores = tmp_path / "scores.jsonl"
    argv = ["--exemplars", str(exemplars), "--test", str(test), "--json", "--quiet"]
    argv += ["--k", "2", "--threshold", "0.2", "--scores-out", str(scores)]
    assert _eval(argv, monkeypatch) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 3
    assert report["classification"]["accuracy"] == 1.0
    assert report["classification"]["oos_recall"] == 1.0
    assert "two_model" not in report
    lines = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [line["text"] for line in lines] == [
        "book a flight to rome",
        "my bank balance please",
        "a joke about cats please",
    ]
    assert all(isinstance(line["score"], float) for line in lines)


def test_eval_command_on_outcome_rows_with_a_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, object]] = []
    for i in range(60):
        hard = i % 2 == 0
        words = "integral of a matrix eigenvalue" if hard else "add two small numbers"
        rows.append(
            {"text": f"{words} case {i}", "outcomes": {"w": 0.0 if hard else 1.0, "s": 1.0}}
        )
    data = write_jsonl(tmp_path / "outcomes.jsonl", rows)
    curve_csv = tmp_path / "curve.csv"
    argv = ["--split", str(data), "--holdout", "0.3", "--weak", "w", "--strong", "s"]
    argv += ["--k", "5", "--temperature", "1.0", "--json", "--quiet", "--curve-csv", str(curve_csv)]
    assert _eval(argv, monkeypatch) == 0
    report = json.loads(capsys.readouterr().out)["two_model"]
    # The words give the difficulty away, so the router ranks like the oracle.
    assert report["apgr"] == pytest.approx(report["oracle_apgr"])
    assert report["cpt50"] < 0.5
    assert report["operating_point"]["need_threshold"] == 0.5
    assert curve_csv.read_text().startswith("strong_share,")


def test_eval_refuses_contradictory_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "route": "b"}])
    with pytest.raises(ConfigError, match="--split replaces"):
        _eval(["--split", str(path), "--test", str(path)], monkeypatch)
    with pytest.raises(ConfigError, match="exactly one"):
        _eval(["--test", str(path)], monkeypatch)
    with pytest.raises(ConfigError, match="--test is required"):
        _eval(["--exemplars", str(path)], monkeypatch)


def _two_route_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(12):
        pad = "friend " * (i % 3)
        rows.append({"text": f"{['hello there', 'good morning', 'hi thanks'][i % 3]} {pad}",
                     "route": "small", "output_tokens": 20})  # fmt: skip
        rows.append({"text": f"{['prove the theorem', 'formal proof'][i % 2]} {pad}",
                     "route": "frontier", "output_tokens": 900})  # fmt: skip
    return rows


@pytest.mark.parametrize("mode", ["gate", "only", "off"])
def test_eval_runs_the_two_stages_and_reports_them(
    mode: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exemplars = write_jsonl(tmp_path / "ex.jsonl", _two_route_rows())
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [{"text": "hello there friend", "route": "small"},
         {"text": "formal proof of the theorem", "route": "frontier"}],
    )  # fmt: skip
    argv = ["--exemplars", str(exemplars), "--test", str(test), "--json", "--quiet", "--k", "3"]
    argv += ["--stage1", mode, "--stage1-gate", "0.6", "--data-dir", str(tmp_path)]
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    assert (
        run_command_with_fake_teacher(
            evaluate.configure, evaluate.run, argv, monkeypatch, tokenizer
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    stages = report["stages"]
    assert report["classification"]["accuracy"] == 1.0
    assert report["classifier"]["stage1_gate"] == 0.6
    assert ("stage1" in report["index"]["heads"]) == (mode != "off")  # off: none is fitted
    expected_share = {"only": 1.0, "off": 0.0}.get(mode)
    if expected_share is not None:
        assert stages["stage1_share"] == expected_share
    if mode == "off":
        assert stages["stage1_us_per_prompt"] is None
    else:
        assert stages["stage1_us_per_prompt"] > 0 and stages["stage1_accuracy"] == 1.0


def test_eval_stage1_only_needs_a_stage1_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exemplars = write_jsonl(tmp_path / "ex.jsonl", _two_route_rows())
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "hello there", "route": "small"}])
    argv = ["--exemplars", str(exemplars), "--test", str(test), "--quiet", "--stage1", "only"]
    with pytest.raises(ConfigError, match="stage-1 head"):
        _eval(argv, monkeypatch)  # the hash embedder cannot teach a static table
    with pytest.raises(ConfigError, match="--stage1-gate"):
        _eval([*argv[:-2], "--stage1-gate", "sometimes"], monkeypatch)


def test_index_build_fits_and_reports_both_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exemplars = write_jsonl(tmp_path / "ex.jsonl", _two_route_rows())
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    out = tmp_path / "index"
    argv = [str(exemplars), "-o", str(out), "--quiet", "--data-dir", str(tmp_path)]
    assert (
        run_command_with_fake_teacher(
            index_build.configure, index_build.run, argv, monkeypatch, tokenizer
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "stage 1 head: l2" in printed and "stage 2 head: l2" in printed
    assert sorted(p.name for p in out.iterdir()) == ["heads.npz", "index.faiss", "meta.json"]
    argv.append("--no-heads")
    assert (
        run_command_with_fake_teacher(
            index_build.configure, index_build.run, argv, monkeypatch, tokenizer
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "meta.json"]

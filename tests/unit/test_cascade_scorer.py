"""The cascade's learned scorer: fitting, its file, ROC AUC, and `cascade train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.cascade.scorer import (
    LearnedScorer,
    load_scorer,
    roc_auc,
    threshold_for_escalation,
    train_scorer,
)
from sidecar.cli import cascade_train
from sidecar.cli.main import build_parser
from sidecar.errors import ConfigError, IndexLoadError
from tests.fakes import HashEmbedder, run_command_with_fake_embedder


def _answers(n: int) -> tuple[list[str], list[str], list[bool]]:
    """Sums, half of them stated wrongly (and the wrong ones end on a fraction)."""
    prompts = [f"Sam has {a} apples and buys {a} more. How many now?" for a in range(n)]
    answers = [
        f"{a} + {a} = {2 * a}\n#### {2 * a}" if a % 2 else f"{a} + {a} = {2 * a + 1}\n#### {a}.5"
        for a in range(n)
    ]
    return prompts, answers, [bool(a % 2) for a in range(n)]


def _embedding_scorer() -> LearnedScorer:
    prompts, answers, correct = _answers(60)
    embedder = HashEmbedder()
    return train_scorer(
        prompts,
        answers,
        correct,
        embeddings=embedder.embed(prompts),
        embed_text="prompt",
        embedder_fingerprint=embedder.fingerprint,
    ).scorer


def test_a_features_scorer_separates_false_sums() -> None:
    trained = train_scorer(*_answers(60))
    assert trained.scorer.out_of_fold_auc is not None and trained.scorer.out_of_fold_auc > 0.95
    assert trained.out_of_fold.shape == (60,)
    scorer = trained.scorer
    assert scorer.probability("q", "2 + 2 = 4\n#### 4") > scorer.probability(
        "q", "2 + 2 = 5\n#### 5.5"
    )


def test_the_scorer_round_trips_through_its_file(tmp_path: Path) -> None:
    scorer = _embedding_scorer()
    path = tmp_path / "scorer.npz"
    scorer.save(path)
    loaded = load_scorer(path, expected_fingerprint=HashEmbedder().fingerprint)
    assert (loaded.embed_text, loaded.embedder_fingerprint, loaded.l2) == (
        "prompt",
        HashEmbedder().fingerprint,
        scorer.l2,
    )
    assert loaded.out_of_fold_auc == pytest.approx(scorer.out_of_fold_auc)
    row = HashEmbedder().embed(["Sam has 3 apples"])[0]
    for answer in ("3 + 3 = 6\n#### 6", "3 + 3 = 7\n#### 3.5"):
        assert loaded.probability("p", answer, row) == pytest.approx(
            scorer.probability("p", answer, row), abs=1e-6
        )


def test_a_scorer_from_another_embedder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scorer.npz"
    _embedding_scorer().save(path)
    with pytest.raises(IndexLoadError, match="retrain the scorer"):
        load_scorer(path, expected_fingerprint="onnx:something-else")


def test_a_features_only_scorer_loads_under_any_embedder(tmp_path: Path) -> None:
    path = tmp_path / "scorer.npz"
    train_scorer(*_answers(60)).scorer.save(path)
    loaded = load_scorer(path, expected_fingerprint="onnx:anything")
    assert not loaded.needs_embedding and loaded.text_to_embed("p", "a") == ""


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_a_broken_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "scorer.npz"
    path.write_bytes(content)
    with pytest.raises(IndexLoadError, match=str(path)):
        load_scorer(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="not a readable cascade scorer"):
        load_scorer(tmp_path / "absent.npz")


def test_training_needs_both_kinds_of_answer() -> None:
    prompts, answers, _ = _answers(60)
    with pytest.raises(ConfigError, match="at least 20 correct and 20 wrong"):
        train_scorer(prompts, answers, [True] * 50 + [False] * 10)


def test_an_embedding_scorer_needs_its_embeddings_and_fingerprint() -> None:
    prompts, answers, correct = _answers(60)
    with pytest.raises(ConfigError, match="exactly when"):
        train_scorer(prompts, answers, correct, embed_text="prompt")
    with pytest.raises(ConfigError, match="fingerprint"):
        train_scorer(
            prompts,
            answers,
            correct,
            embeddings=HashEmbedder().embed(prompts),
            embed_text="prompt",
        )


@pytest.mark.parametrize(
    ("scores", "positive", "auc"),
    [
        ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [False, False, True, True], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [False, True, False, True], 0.5),
        ([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.75),
        ([0.3, 0.3, 0.6], [False, True, True], 0.75),  # a tie counts half
    ],
)
def test_roc_auc(scores: list[float], positive: list[bool], auc: float) -> None:
    assert roc_auc(scores, positive) == pytest.approx(auc)


def test_roc_auc_needs_both_classes() -> None:
    with pytest.raises(ConfigError):
        roc_auc([0.1, 0.2], [True, True])


def test_the_threshold_escalates_the_asked_share() -> None:
    scores = np.linspace(0.0, 1.0, 101)
    threshold = threshold_for_escalation(scores, 0.3)
    assert np.mean(scores < threshold) == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ConfigError):
        threshold_for_escalation(scores, 1.5)


def _outcomes_file(path: Path, n: int = 80) -> Path:
    prompts, answers, correct = _answers(n)
    rows = [
        {
            "text": p,
            "outcomes": {"weak": float(c), "strong": 1.0},
            "responses": {"weak": a, "strong": "right"},
        }
        for p, a, c in zip(prompts, answers, correct, strict=True)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cascade_train_writes_a_scorer_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = _outcomes_file(tmp_path / "outcomes.jsonl")
    out = tmp_path / "scorer.npz"
    argv = ["--outcomes", str(outcomes), "--weak", "weak", "--holdout", "0.25", "--quiet"]
    argv += ["--json", "-o", str(out)]
    code = run_command_with_fake_embedder(
        cascade_train.configure, cascade_train.run, argv, monkeypatch
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_rows"] + report["held_out_rows"] == 80
    assert 0 < report["held_out_rows"] < 40
    assert report["embed"] == "prompt"
    assert report["held_out_auc"] > 0.9
    scorer = load_scorer(out, expected_fingerprint=HashEmbedder().fingerprint)
    assert scorer.needs_embedding


def test_cascade_train_trains_on_the_train_side_of_the_eval_split() -> None:
    answers = [
        cascade_train.LabelledAnswer(prompt=f"prompt {i}", answer="a", correct=True)
        for i in range(200)
    ]
    train, held = cascade_train.train_side(answers, holdout=0.3, salt="1")
    from sidecar.evaluation.datasets import LabelledRow, split_by_hash

    rows = [LabelledRow(text=a.prompt, outcomes={"m": 1.0}) for a in answers]
    kept, held_rows = split_by_hash(rows, holdout=0.3, salt="1")
    assert [a.prompt for a in train] == [r.text for r in kept]
    assert [a.prompt for a in held] == [r.text for r in held_rows]
    everything, nothing = cascade_train.train_side(answers, holdout=0.0, salt="")
    assert (len(everything), nothing) == (200, [])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "q", "outcomes": {"weak": 1.0}}, "'responses'"),
        ({"text": "q", "outcomes": {"other": 1.0}, "responses": {"weak": "a"}}, "outcomes.weak"),
        ({"text": "q", "outcomes": {"weak": 1.0}, "responses": {"weak": 3}}, "responses.weak"),
        ({"text": "", "outcomes": {"weak": 1.0}, "responses": {"weak": "a"}}, "'text'"),
    ],
)
def test_cascade_train_names_the_bad_row(tmp_path: Path, row: object, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=rf"bad.jsonl:1: .*{message}"):
        cascade_train.load_labelled_answers(path, "weak")


def test_cascade_train_is_a_command() -> None:
    args = build_parser().parse_args(
        ["cascade", "train", "--outcomes", "o.jsonl", "--weak", "m", "-o", "s.npz"]
    )
    assert args.run is cascade_train.run
    assert (args.holdout, args.embed, args.target_escalation) == (0.3, "prompt", 0.3)

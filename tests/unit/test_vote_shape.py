"""Choosing k and temperature by leave-one-out (sidecar/evaluation/vote_shape.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.cli import calibrate
from sidecar.core.vote import OUT_OF_SCOPE, Neighbour, TwoModel, VoteConfig
from sidecar.evaluation.vote_shape import (
    accuracy_at_recall,
    in_scope_accuracy,
    need_apgr,
    score_shapes,
)
from tests.fakes import run_command_with_fake_embedder, write_jsonl


def noisy_neighbourhoods(labels: list[str]) -> list[tuple[Neighbour, ...]]:
    """The closest neighbour has the other label; the four after it have the right one."""
    other = {"a": "b", "b": "a"}
    return [
        (
            Neighbour(other[label], 0.95, None),
            *(Neighbour(label, 0.9 - 0.01 * i, None) for i in range(4)),
        )
        for label in labels
    ]


def test_a_noisy_nearest_neighbour_makes_a_wide_flat_vote_win() -> None:
    labels = ["a", "b"] * 10
    scores = score_shapes(
        noisy_neighbourhoods(labels),
        labels,
        VoteConfig(k=1, temperature=0.01),
        in_scope_accuracy,
        ks=(1, 5),
        temperatures=(0.01, 1.0),
    )
    by_pair = {(s.k, s.temperature): s.score for s in scores}
    assert by_pair[(1, 0.01)] == 0.0  # the closest neighbour is always wrong
    assert by_pair[(5, 0.01)] == 0.0  # a sharp kernel still hears only it
    assert by_pair[(5, 1.0)] == 1.0  # four flat votes outweigh it
    assert max(scores, key=lambda s: s.score) == scores[3]


def test_the_recall_objective_counts_out_of_scope_exemplars() -> None:
    labels = ["a", OUT_OF_SCOPE] * 10
    neighbourhoods = [(Neighbour(label, 0.9, None), Neighbour("a", 0.5, None)) for label in labels]
    objective = accuracy_at_recall(target_recall=1.0, confidence=0.5)
    (score,) = score_shapes(
        neighbourhoods, labels, VoteConfig(), objective, ks=(2,), temperatures=(0.1,)
    )
    assert score.score == 1.0  # every out-of-scope exemplar caught, every in-scope one right


def test_need_apgr_rewards_a_need_score_that_ranks_strong_wins_first() -> None:
    two_model = TwoModel()
    labels = ["strong", "weak", "tie", "strong", "strong", "tie"]
    right = [(Neighbour(label, 0.9, None),) for label in labels]
    wrong = [
        (Neighbour({"strong": "weak", "weak": "strong"}.get(label, label), 0.9, None),)
        for label in labels
    ]
    config = VoteConfig(two_model=two_model)
    objective = need_apgr(two_model.weak, two_model.strong)
    (good,) = score_shapes(right, labels, config, objective, ks=(1,), temperatures=(0.1,))
    (bad,) = score_shapes(wrong, labels, config, objective, ks=(1,), temperatures=(0.1,))
    assert good.score > 0.5 > bad.score


def test_equal_scores_keep_the_configured_pair_first() -> None:
    labels = ["a", "b"] * 4
    neighbourhoods = [(Neighbour(label, 0.9, None),) * 3 for label in labels]
    scores = score_shapes(
        neighbourhoods,
        labels,
        VoteConfig(),
        in_scope_accuracy,
        ks=(3, 1),
        temperatures=(0.1, 1.0),
    )
    assert {s.score for s in scores} == {1.0}
    assert max(scores, key=lambda s: s.score) == scores[0]


def _rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(20):
        rows.append({"text": f"book a flight to city {i}", "route": "travel"})
        rows.append({"text": f"what is my bank balance number {i}", "route": "bank"})
        rows.append({"text": f"random chatter about topic {i} tonight", "route": None})
    return rows


def test_calibrate_chooses_k_and_temperature_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exemplars = write_jsonl(tmp_path / "ex.jsonl", _rows())
    settings = tmp_path / "settings.yaml"
    argv = ["--exemplars", str(exemplars), "--settings", str(settings), "--quiet"]
    argv += ["--target-oos-recall", "0.5", "--confidence", "0.5"]
    assert (
        run_command_with_fake_embedder(calibrate.configure, calibrate.run, argv, monkeypatch) == 0
    )
    section = yaml.safe_load(settings.read_text())["classifier"]
    assert "leave-one-out in-scope accuracy at out-of-scope recall 0.5" in capsys.readouterr().out
    assert section["k"] in (5, 10, 20, 50)  # under the exemplar count (60)
    assert section["temperature"] in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)

    settings.unlink()
    argv.append("--keep-shape")
    assert (
        run_command_with_fake_embedder(calibrate.configure, calibrate.run, argv, monkeypatch) == 0
    )
    assert "leave-one-out" not in capsys.readouterr().out
    assert "k" not in yaml.safe_load(settings.read_text())["classifier"]

"""Threshold choice hits its targets on small in-memory sets; settings are merged, not replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.cli import calibrate
from sidecar.core.vote import (
    OUT_OF_SCOPE,
    STAGE_MODEL,
    STAGE_STATIC,
    Neighbour,
    VoteConfig,
    head_vote,
    vote,
)
from sidecar.errors import ConfigError
from sidecar.evaluation.calibration import (
    CalibrationPoint,
    StagedPoint,
    choose_need_threshold,
    choose_stages,
    choose_thresholds,
    required_recall,
    score_stages,
    thresholds_off,
    write_classifier_settings,
)
from tests.fakes import (
    TokenHashEmbedder,
    run_command_with_fake_embedder,
    run_command_with_fake_teacher,
    write_jsonl,
    write_word_tokenizer,
)


def p(winner: str | None, gold: str | None, similarity: float) -> CalibrationPoint:
    return CalibrationPoint(winner=winner, gold=gold, similarity=similarity)


POINTS = [
    # route a: four correct, one in-scope prompt it gets wrong
    p("a", "a", 0.9),
    p("a", "a", 0.8),
    p("a", "a", 0.7),
    p("a", "a", 0.6),
    p("a", "b", 0.95),
    # route b: two correct
    p("b", "b", 0.9),
    p("b", "b", 0.85),
    # out of scope: two claimed by a, one by b, one the vote already refuses
    p("a", None, 0.65),
    p("a", None, 0.55),
    p("b", None, 0.78),
    p(None, None, 0.99),
]


def test_required_recall_without_and_with_a_confidence_bound() -> None:
    assert required_recall(0.75, 100, 0.5) == pytest.approx(0.75)
    bounded = required_recall(0.75, 100, 0.95)
    assert 0.8 < bounded < 0.86
    assert required_recall(0.75, 10_000, 0.95) < bounded  # more data, less slack
    assert required_recall(0.99, 10, 0.95) == 1.0
    with pytest.raises(ConfigError, match="confidence"):
        required_recall(0.75, 100, 1.0)


def test_global_threshold_is_the_lowest_meeting_the_recall_target() -> None:
    choice = choose_thresholds(POINTS, target_recall=0.75, confidence=0.5)
    # Catch 3 of 4: one is free, so reject the two lowest claimed (0.55, 0.65).
    assert choice.threshold == pytest.approx(0.6501)
    assert choice.route_thresholds == {}
    assert choice.oos_recall == pytest.approx(0.75)
    assert choice.accuracy == pytest.approx(5 / 7)
    assert (choice.n_in_scope, choice.n_out_of_scope) == (7, 4)


def test_per_route_offsets_buy_accuracy_at_the_same_recall() -> None:
    choice = choose_thresholds(
        POINTS, target_recall=0.75, confidence=0.5, max_route_offset=0.15, offset_steps=11
    )
    # b moves up past its out-of-scope prompt (0.78); a moves down to accept its 0.6.
    assert choice.route_thresholds["b"] == pytest.approx(0.8001)
    assert 0.55 < choice.route_thresholds["a"] <= 0.6
    assert choice.oos_recall >= 0.75
    assert choice.accuracy == pytest.approx(6 / 7)


def test_a_stricter_target_raises_the_threshold() -> None:
    loose = choose_thresholds(POINTS, target_recall=0.5, confidence=0.5)
    strict = choose_thresholds(POINTS, target_recall=1.0, confidence=0.5)
    assert loose.threshold < strict.threshold
    assert strict.oos_recall == 1.0
    assert strict.threshold == pytest.approx(0.7801)


def test_threshold_choice_needs_in_scope_prompts_and_keeps_thresholds_off_without_oos() -> None:
    with pytest.raises(ConfigError, match="in-scope"):
        choose_thresholds([p(None, None, 0.9)], target_recall=0.5)
    # Nothing to catch: any threshold would only cost right answers.
    tiers = choose_thresholds(
        [p("a", "a", 0.2), p("b", "b", 0.9), p("a", "b", 0.95)], target_recall=0.9
    )
    assert (tiers.threshold, tiers.route_thresholds) == (-1.0, {})
    assert tiers.accuracy == pytest.approx(2 / 3) and tiers.n_out_of_scope == 0


def test_need_threshold_hits_the_strong_share() -> None:
    threshold, share = choose_need_threshold([0.9, 0.8, 0.7, 0.6, 0.5], 0.4)
    assert (threshold, share) == (0.8, 0.4)
    threshold, share = choose_need_threshold([0.9, 0.7, 0.7, 0.7, 0.5], 0.4)
    assert share in (0.2, 0.8)  # ties: as close as they allow
    assert choose_need_threshold([0.2, 0.4], 0.0)[1] == 0.0


def test_settings_are_merged_into_the_classifier_section(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        yaml.safe_dump({"listen": "127.0.0.1:1", "classifier": {"k": 7, "threshold": 0.1}})
    )
    write_classifier_settings(path, {"threshold": 0.5, "route_thresholds": {"a": 0.6}})
    data = yaml.safe_load(path.read_text())
    assert data == {
        "listen": "127.0.0.1:1",
        "classifier": {"k": 7, "threshold": 0.5, "route_thresholds": {"a": 0.6}},
    }
    with pytest.raises(ConfigError, match=r"classifier\.thershold"):
        write_classifier_settings(path, {"thershold": 0.5})
    assert yaml.safe_load(path.read_text()) == data  # a refused update leaves the file alone


def _calibrate(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    return run_command_with_fake_embedder(calibrate.configure, calibrate.run, argv, monkeypatch)


def test_calibrate_command_writes_thresholds_for_an_oos_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[dict[str, object]] = []
    for i in range(20):
        rows.append({"text": f"book a flight to city {i}", "route": "travel"})
        rows.append({"text": f"what is my bank balance number {i}", "route": "bank"})
        rows.append({"text": f"random chatter about topic {i} tonight", "route": None})
    exemplars = write_jsonl(tmp_path / "ex.jsonl", rows)
    settings = tmp_path / "settings.yaml"
    settings.write_text("default_route: mid\n")
    argv = ["--exemplars", str(exemplars), "--settings", str(settings), "--quiet"]
    argv += ["--k", "3", "--target-oos-recall", "0.5", "--confidence", "0.5"]
    assert _calibrate(argv, monkeypatch) == 0
    data = yaml.safe_load(settings.read_text())
    assert data["default_route"] == "mid"
    assert data["classifier"]["k"] == 3
    assert -1.0 <= data["classifier"]["threshold"] <= 1.0


def test_calibrate_command_writes_a_need_threshold_for_a_share_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[dict[str, object]] = []
    for i in range(40):
        hard = i % 4 == 0
        words = "integral of a matrix eigenvalue" if hard else "add two small numbers"
        rows.append({"text": f"{words} {i}", "outcomes": {"w": 0.0 if hard else 1.0, "s": 1.0}})
    exemplars = write_jsonl(tmp_path / "outcomes.jsonl", rows)
    settings = tmp_path / "settings.yaml"
    argv = ["--exemplars", str(exemplars), "--settings", str(settings), "--quiet"]
    argv += ["--weak", "w", "--strong", "s", "--k", "5", "--target-strong-share", "0.25"]
    assert _calibrate(argv, monkeypatch) == 0
    two_model = yaml.safe_load(settings.read_text())["classifier"]["two_model"]
    assert two_model["weak"] == "weak"
    assert two_model["strong"] == "strong"
    assert 0.5 < two_model["need_threshold"] <= 1.0


LOOSE = thresholds_off(VoteConfig(k=1, temperature=0.1))


def staged(
    gold: str | None,
    knn: tuple[str, float],
    head: tuple[str, float, float],
    first: tuple[str, float],
) -> StagedPoint:
    """A calibration prompt from (route, similarity), (route, probability, similarity) and
    (route, probability) of the kNN vote, the stage-2 head and the stage-1 head."""

    def scores(route: str, p: float) -> dict[str, float]:
        other = "b" if route != "b" else "a"
        return {route: p, other: 1.0 - p}

    head_route, head_p, head_sim = head
    return StagedPoint(
        gold=gold,
        knn=vote([Neighbour(knn[0], knn[1], None)], LOOSE),
        head=head_vote(
            scores(head_route, head_p),
            [Neighbour(head_route, head_sim, None)],
            LOOSE,
            stage=STAGE_MODEL,
            min_probability=0.0,
        ),
        stage1=head_vote(scores(*first), [], LOOSE, stage=STAGE_STATIC, min_probability=0.0),
    )


STAGED = (
    # In scope: the head is right on all eight, the kNN vote on six; stage 1 is sure and
    # right on four, sure (0.82) and wrong on one, unsure on the rest.
    [staged("a", ("a", 0.9), ("a", 0.9, 0.9), ("a", 0.99)) for _ in range(4)]
    + [staged("a", ("b", 0.9), ("a", 0.8, 0.8), ("b", 0.82))]
    + [staged("b", ("a", 0.8), ("b", 0.7, 0.8), ("b", 0.6))]
    + [staged("b", ("b", 0.9), ("b", 0.9, 0.9), ("b", 0.55)) for _ in range(2)]
    # Out of scope: the head and kNN claim them at low similarity; stage 1 is sure of one.
    + [staged(None, ("a", 0.3), ("a", 0.6, 0.3), ("a", 0.6)) for _ in range(3)]
    + [staged(None, ("b", 0.35), ("b", 0.55, 0.35), ("b", 0.9))]
)


def test_stages_pick_the_more_accurate_decider_and_the_lowest_safe_gate() -> None:
    choice = choose_stages(STAGED, VoteConfig(k=1), target_recall=1.0, confidence=0.5)
    assert choice.decider == "head" and choice.head_accuracy == 1.0
    assert choice.knn_accuracy == pytest.approx(6 / 8)
    assert choice.thresholds.oos_recall == 1.0
    # Alone, stage 1 must refuse the out-of-scope prompt it is sure of (0.9) to reach the
    # recall: its threshold is just above 0.9, and no lower gate means anything.
    assert choice.stage1_threshold == 0.9001 and choice.stage1_alone == (0.5, 1.0)
    assert choice.stage1_gate == 0.9001
    assert choice.stage1_share == pytest.approx(4 / 12)
    assert (choice.accuracy, choice.oos_recall) == (1.0, 1.0)
    settings = choice.settings()
    assert settings["decider"] == "head" and settings["stage1_gate"] == 0.9001


def test_stages_honour_a_loss_budget_a_forced_decider_and_no_gate() -> None:
    strict = choose_stages(STAGED, VoteConfig(k=1), target_recall=0.5, confidence=0.5)
    lenient = choose_stages(
        STAGED, VoteConfig(k=1), target_recall=0.5, confidence=0.5, max_stage1_loss=0.2
    )
    # Without a loss budget the wrong-but-sure 0.82 must stay on stage 2; with one it may go.
    assert strict.stage1_gate == 0.85 and strict.accuracy == 1.0
    assert lenient.stage1_gate is not None and lenient.stage1_gate < 0.82
    assert lenient.stage1_share > strict.stage1_share and lenient.accuracy < 1.0
    knn = choose_stages(STAGED, VoteConfig(k=1), target_recall=1.0, confidence=0.5, decider="knn")
    assert knn.decider == "knn" and knn.head_threshold == 0.0
    off = choose_stages(STAGED, VoteConfig(k=1), target_recall=1.0, confidence=0.5, gate=None)
    assert off.stage1_gate is None and off.stage1_share == 0.0
    assert off.stage1_threshold is not None  # still chosen: overload needs it
    given = choose_stages(STAGED, VoteConfig(k=1), target_recall=0.5, confidence=0.5, gate=0.6)
    assert given.stage1_gate == 0.6 and given.accuracy < 1.0  # taken as given, at a cost


def test_stages_without_heads_keep_the_knn_vote() -> None:
    bare = [StagedPoint(gold=p.gold, knn=p.knn) for p in STAGED]
    choice = choose_stages(bare, VoteConfig(k=1), target_recall=1.0, confidence=0.5)
    assert choice.decider == "knn" and choice.stage1_threshold is None
    assert "stage1_gate" not in choice.settings()
    with pytest.raises(ConfigError, match="head"):
        choose_stages(bare, VoteConfig(k=1), target_recall=1.0, confidence=0.5, decider="head")


def test_calibrate_command_chooses_the_stages_from_cross_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, object]] = []
    for i, (greeting, proof, chatter) in enumerate(
        zip(
            ["hello there", "hi friend", "good morning", "hey thanks"] * 5,
            ["prove the theorem", "formal proof of the lemma", "prove the bound"] * 7,
            ["weather on mars", "the moon today", "what is the weather"] * 7,
            strict=False,
        )
    ):
        rows.append({"text": f"{greeting} {'friend ' * (i % 3)}", "route": "small"})
        rows.append({"text": f"{proof} {'rigorously ' * (i % 3)}", "route": "frontier"})
        rows.append({"text": f"{chatter} {'today ' * (i % 3)}", "route": None})
    exemplars = write_jsonl(tmp_path / "ex.jsonl", rows)
    settings = tmp_path / "settings.yaml"
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    argv = ["--exemplars", str(exemplars), "--settings", str(settings), "--quiet", "--k", "3"]
    argv += ["--target-oos-recall", "0.5", "--confidence", "0.5", "--data-dir", str(tmp_path)]
    run = run_command_with_fake_teacher(
        calibrate.configure, calibrate.run, argv, monkeypatch, tokenizer
    )
    assert run == 0
    section = yaml.safe_load(settings.read_text())["classifier"]
    assert section["decider"] in ("knn", "head")
    assert 0.0 <= section["stage1_threshold"] <= 1.0
    assert section["stage1_gate"] is None or 0.5 <= section["stage1_gate"] <= 1.0
    assert "stage 1: threshold" in capsys.readouterr().out
    assert isinstance(TokenHashEmbedder(tokenizer).fingerprint, str)
    assert OUT_OF_SCOPE not in section.get("route_thresholds", {})


def test_stages_calibrate_on_tiers_without_out_of_scope_prompts() -> None:
    tiers = [point for point in STAGED if point.gold is not None]
    choice = choose_stages(tiers, VoteConfig(k=1), target_recall=0.85)
    assert choice.thresholds.threshold == -1.0 and choice.oos_recall == 1.0
    assert choice.stage1_threshold == 0.0  # nothing to refuse when stage 1 decides alone
    # The lowest gate that keeps the head's 8/8: stage 1's sure-and-wrong 0.82 must not pass.
    assert choice.stage1_gate == 0.85 and choice.accuracy == 1.0
    assert choice.stage1_share == pytest.approx(4 / 8)


def test_scoring_a_setting_decides_as_the_sidecar_does() -> None:
    choice = choose_stages(STAGED, VoteConfig(k=1), target_recall=1.0, confidence=0.5)
    config = VoteConfig(k=1, **choice.settings())  # type: ignore[arg-type]
    score = score_stages(STAGED, config)
    assert score.stage1_share == pytest.approx(choice.stage1_share)
    assert (score.accuracy, score.oos_recall) == (choice.accuracy, choice.oos_recall)
    assert score.stage1_accuracy == 1.0 and score.stage2_accuracy == 1.0
    ungated = score_stages(STAGED, VoteConfig(k=1, stage1_gate=None))
    assert ungated.stage1_share == 0.0 and ungated.stage1_accuracy is None
    assert ungated.stage2_accuracy == pytest.approx(6 / 8)  # the kNN vote, thresholds at 0.25
    with pytest.raises(ConfigError, match="in-scope"):
        score_stages([point for point in STAGED if point.gold is None], config)


def test_the_gate_keeps_the_encoder_where_it_beats_a_better_stage1() -> None:
    points = (
        # Stage 1 is sure and right where the kNN vote is wrong...
        [staged("a", ("b", 0.9), ("b", 0.9, 0.9), ("a", 0.99)) for _ in range(4)]
        + [staged("a", ("a", 0.9), ("a", 0.9, 0.9), ("a", 0.9)) for _ in range(2)]
        # ...and unsure and wrong where the vote is right.
        + [staged("b", ("b", 0.9), ("b", 0.9, 0.9), ("a", 0.52)) for _ in range(2)]
    )
    choice = choose_stages(points, VoteConfig(k=1), target_recall=0.9, decider="knn")
    # Gate 0.5 already beats stage 2 alone (6/8 against 4/8), but 0.55 keeps all eight.
    assert choice.knn_accuracy == 0.5
    assert choice.stage1_gate == 0.55 and choice.accuracy == 1.0
    assert choice.stage1_share == pytest.approx(6 / 8)


def test_calibrate_command_chooses_a_gate_for_tiers_without_out_of_scope_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict[str, object]] = []
    for i in range(21):
        rows.append({"text": f"hello there {'friend ' * (i % 3)}{i}", "route": "small"})
        proof = f"prove the theorem {'rigorously ' * (i % 3)}{i}"
        rows.append({"text": proof, "route": "frontier"})
    exemplars = write_jsonl(tmp_path / "tiers.jsonl", rows)
    settings = tmp_path / "settings.yaml"
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer.json")
    argv = ["--exemplars", str(exemplars), "--settings", str(settings), "--quiet", "--k", "3"]
    argv += ["--target-oos-recall", "0.85", "--data-dir", str(tmp_path)]
    run = run_command_with_fake_teacher(
        calibrate.configure, calibrate.run, argv, monkeypatch, tokenizer
    )
    assert run == 0
    section = yaml.safe_load(settings.read_text())["classifier"]
    assert section["threshold"] == -1.0 and section["route_thresholds"] == {}
    assert section["stage1_threshold"] == 0.0
    assert 0.5 <= section["stage1_gate"] <= 1.0
    assert "no out-of-scope prompts among 42" in capsys.readouterr().out

"""Metrics on tiny hand-computed examples, outcome labels and hash splits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sidecar.errors import ConfigError, OutputError
from sidecar.evaluation.datasets import (
    LabelledRow,
    hash_fraction,
    label_outcome,
    split_by_hash,
    to_exemplars,
)
from sidecar.evaluation.metrics import (
    RoutingCurve,
    apgr,
    classification_metrics,
    cpt,
    operating_point,
    plot_curve,
    routing_curve,
    two_model_metrics,
    write_curve_csv,
)

# Four prompts: the strong model helps on 1 and 2, hurts on 3, changes nothing on 0.
WEAK = [1.0, 0.0, 0.0, 1.0]
STRONG = [1.0, 1.0, 1.0, 0.0]
GAIN = [s - w for w, s in zip(WEAK, STRONG, strict=True)]


def test_classification_metrics_by_hand() -> None:
    gold = ["a", "a", "b", None, None]
    pred = ["a", None, "a", None, "b"]
    m = classification_metrics(gold, pred)
    assert (m.n_in_scope, m.n_out_of_scope) == (3, 2)
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.in_scope_abstain_rate == pytest.approx(1 / 3)
    assert m.oos_recall == pytest.approx(1 / 2)
    assert m.oos_precision == pytest.approx(1 / 2)
    # a: tp 1, fp 1, fn 1 -> 0.5; b: tp 0 -> 0.
    assert m.macro_f1 == pytest.approx(0.25)


def test_classification_metrics_without_out_of_scope_rows() -> None:
    m = classification_metrics(["a", "b"], ["a", "b"])
    assert m.accuracy == 1.0
    assert m.macro_f1 == 1.0
    assert m.oos_recall is None
    assert m.oos_precision is None


def test_curve_of_a_perfect_router_by_hand() -> None:
    curve = routing_curve(GAIN, WEAK, STRONG)
    assert curve.weak_performance == 0.5
    assert curve.strong_performance == 0.75
    # Prompts 1 and 2 share a score: one block, so no point between them.
    assert curve.strong_share == (0.0, 0.5, 0.75, 1.0)
    assert curve.performance == (0.5, 1.0, 1.0, 0.75)
    assert curve.pgr == (0.0, 2.0, 2.0, 1.0)
    assert apgr(curve) == pytest.approx(0.5 * 1.0 + 0.25 * 2.0 + 0.25 * 1.5)
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 0.8) == pytest.approx(0.2)


def test_random_router_is_the_diagonal() -> None:
    curve = routing_curve([0.3] * 4, WEAK, STRONG)
    assert curve.strong_share == (0.0, 1.0)
    assert apgr(curve) == pytest.approx(0.5)
    assert cpt(curve, 0.5) == pytest.approx(0.5)
    assert cpt(curve, 0.8) == pytest.approx(0.8)


def test_inverse_router_by_hand_and_mirror_of_the_perfect_one() -> None:
    curve = routing_curve([-g for g in GAIN], WEAK, STRONG)
    assert curve.pgr == (0.0, -1.0, -1.0, 1.0)
    assert apgr(curve) == pytest.approx(-0.375)
    assert apgr(curve) + apgr(routing_curve(GAIN, WEAK, STRONG)) == pytest.approx(1.0)
    assert cpt(curve, 0.5) == pytest.approx(0.875)
    assert cpt(curve, 1.5) is None


def test_two_model_metrics_include_the_oracle() -> None:
    metrics, curve = two_model_metrics([0.1, 0.9, 0.8, 0.0], WEAK, STRONG)
    assert metrics.n == 4
    assert metrics.oracle_apgr == pytest.approx(1.375)
    assert metrics.apgr == pytest.approx(apgr(curve))
    assert metrics.random_apgr == 0.5


def test_equal_models_make_pgr_undefined() -> None:
    # The operator's rows are at fault, not the code: a ConfigError, not a ValueError.
    with pytest.raises(ConfigError, match="undefined"):
        _ = routing_curve([0.1, 0.2], [1.0, 0.0], [1.0, 0.0]).pgr
    with pytest.raises(ConfigError, match="at least one outcome row"):
        routing_curve([], [], [])


def test_operating_point() -> None:
    point = operating_point([0.1, 0.9, 0.8, 0.0], WEAK, STRONG, 0.5)
    assert point.strong_share == 0.5
    assert point.performance == 1.0


def test_curve_csv(tmp_path: Path) -> None:
    write_curve_csv(routing_curve(GAIN, WEAK, STRONG), tmp_path / "c.csv")
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "strong_share,performance,pgr"
    assert lines[1] == "0.000000,0.500000,0.000000"
    assert len(lines) == 5


def test_unwritable_outputs_are_output_errors(tmp_path: Path) -> None:
    curve = routing_curve(GAIN, WEAK, STRONG)
    nowhere = tmp_path / "missing-dir" / "c.csv"
    with pytest.raises(OutputError, match="missing-dir"):
        write_curve_csv(curve, nowhere)


def test_plot_without_matplotlib_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    curve = RoutingCurve((0.0, 1.0), (0.5, 0.75), 0.5, 0.75)
    with pytest.raises(ConfigError, match="matplotlib"):
        plot_curve(curve, tmp_path / "c.png", title="t", weak="w", strong="s")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot_curve(
        routing_curve(GAIN, WEAK, STRONG), tmp_path / "c.png", title="t", weak="w", strong="s"
    )
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("weak", "strong", "gain", "strong_wins", "weak_fails"),
    [
        (0.0, 1.0, "strong", "strong", "strong"),
        (1.0, 0.0, "weak", "weak", "weak"),
        (1.0, 1.0, "tie", "weak", "weak"),
        (0.0, 0.0, "tie", "weak", "strong"),
    ],
)
def test_label_rules(
    weak: float, strong: float, gain: str, strong_wins: str, weak_fails: str
) -> None:
    row = LabelledRow(text="q", outcomes={"w": weak, "s": strong})
    assert label_outcome(row, weak="w", strong="s", rule="gain") == gain
    assert label_outcome(row, weak="w", strong="s", rule="strong-wins") == strong_wins
    assert label_outcome(row, weak="w", strong="s", rule="weak-fails") == weak_fails


def test_outcome_rows_need_model_names() -> None:
    rows = [LabelledRow(text="q", outcomes={"w": 0.0, "s": 1.0})]
    with pytest.raises(ConfigError, match="--weak"):
        to_exemplars(rows)
    with pytest.raises(ConfigError, match="'x'"):
        to_exemplars(rows, weak="x", strong="s")


def test_split_by_hash_is_stable_disjoint_and_keeps_duplicates_together() -> None:
    rows = [LabelledRow(text=f"prompt {i}", route="a") for i in range(400)]
    rows.append(LabelledRow(text="prompt 7", route="a"))
    kept, held = split_by_hash(rows, holdout=0.3)
    assert {r.text for r in kept}.isdisjoint({r.text for r in held})
    assert 0.2 < len(held) / len(rows) < 0.4
    assert split_by_hash(rows, holdout=0.3) == (kept, held)
    assert split_by_hash(rows, holdout=0.3, salt="other") != (kept, held)
    assert hash_fraction("x") == hash_fraction("x")
    with pytest.raises(ConfigError, match="holdout"):
        split_by_hash(rows, holdout=1.0)

"""The vote: weights, ties, abstention by threshold, margin and out-of-scope negatives."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sidecar.config.validation import validate
from sidecar.core.vote import (
    LOW_PROBABILITY,
    OUT_OF_SCOPE,
    SHED,
    STAGE_MODEL,
    STAGE_STATIC,
    Neighbour,
    TwoModel,
    VoteConfig,
    abstention,
    head_vote,
    need_from_scores,
    vote,
)
from sidecar.errors import ConfigError


def n(route: str, similarity: float, tokens: int | None = None, weight: float = 1.0) -> Neighbour:
    return Neighbour(route=route, similarity=similarity, output_tokens=tokens, weight=weight)


FLAT = VoteConfig(k=10, threshold=0.0, temperature=1e6)  # kernel ~1: plain weighted count


def test_majority_wins_and_scores_are_probabilities() -> None:
    verdict = vote([n("a", 0.9), n("a", 0.8), n("b", 0.85)], FLAT)
    assert verdict.route == "a"
    assert verdict.scores["a"] == pytest.approx(2 / 3)
    assert verdict.scores["b"] == pytest.approx(1 / 3)
    assert sum(verdict.scores.values()) == pytest.approx(1.0)
    assert verdict.confidence == pytest.approx(2 / 3)
    assert verdict.margin == pytest.approx(1 / 3)
    assert verdict.best_similarity == pytest.approx(0.9)
    assert verdict.abstain_reason is None


def test_exemplar_weights_scale_votes() -> None:
    verdict = vote([n("a", 0.9), n("a", 0.9), n("b", 0.9, weight=3.0)], FLAT)
    assert verdict.route == "b"
    assert verdict.scores["b"] == pytest.approx(0.6)


def test_temperature_lets_the_closest_neighbour_dominate() -> None:
    neighbours = [n("a", 0.95), n("b", 0.80), n("b", 0.79)]
    assert vote(neighbours, FLAT).route == "b"
    sharp = VoteConfig(threshold=0.0, temperature=0.01)
    verdict = vote(neighbours, sharp)
    assert verdict.route == "a"
    # exp((0.80 - 0.95) / 0.01) is negligible next to 1.
    assert verdict.scores["a"] == pytest.approx(1 / (1 + math.exp(-15) + math.exp(-16)))


def test_exact_tie_is_decided_the_same_whatever_the_neighbour_order() -> None:
    neighbours = [n("b", 0.7), n("a", 0.7), n("c", 0.7), n("b", 0.7), n("a", 0.7)]
    verdicts = [
        vote(order, FLAT)
        for order in (neighbours, neighbours[::-1], neighbours[1:] + neighbours[:1])
    ]
    assert {v.route for v in verdicts} == {"a"}
    assert verdicts[0].margin == 0.0


def test_abstains_below_the_default_threshold() -> None:
    config = VoteConfig(threshold=0.6, temperature=1e6)
    verdict = vote([n("a", 0.55), n("a", 0.5)], config)
    assert verdict.route is None
    assert verdict.abstain_reason == "below_threshold"
    assert verdict.threshold == 0.6
    assert verdict.best_similarity == pytest.approx(0.55)


def test_per_route_threshold_overrides_the_default() -> None:
    config = VoteConfig(threshold=0.6, route_thresholds={"a": 0.5}, temperature=1e6)
    assert vote([n("a", 0.55)], config).route == "a"
    assert vote([n("b", 0.55)], config).route is None
    assert vote([n("a", 0.55)], config).threshold == 0.5


def test_abstains_when_the_margin_is_too_small() -> None:
    config = VoteConfig(threshold=0.0, min_margin=0.2, temperature=1e6)
    verdict = vote([n("a", 0.9), n("a", 0.9), n("b", 0.9), n("c", 0.9)], config)
    assert verdict.margin == pytest.approx(0.25)
    assert verdict.route == "a"
    verdict = vote([n("a", 0.9), n("a", 0.9), n("b", 0.9), n("b", 0.8), n("c", 0.9)], config)
    assert verdict.margin == pytest.approx(0.0, abs=1e-6)
    assert verdict.route is None
    assert verdict.abstain_reason == "low_margin"


def test_out_of_scope_neighbours_win_into_an_abstention() -> None:
    verdict = vote([n(OUT_OF_SCOPE, 0.9), n(OUT_OF_SCOPE, 0.8), n("a", 0.85)], FLAT)
    assert verdict.route is None
    assert verdict.abstain_reason == "out_of_scope"
    assert verdict.scores[OUT_OF_SCOPE] == pytest.approx(2 / 3)


def test_out_of_scope_neighbours_take_probability_and_margin_from_routes() -> None:
    config = VoteConfig(threshold=0.0, min_margin=0.3, temperature=1e6)
    clean = vote([n("a", 0.9), n("a", 0.9), n("b", 0.9)], config)
    assert clean.route == "a"
    mixed = vote([n("a", 0.9), n("a", 0.9), n(OUT_OF_SCOPE, 0.9), n("b", 0.9)], config)
    assert mixed.confidence == pytest.approx(0.5)
    assert mixed.route is None
    assert mixed.abstain_reason == "low_margin"


def test_no_neighbours_abstains() -> None:
    verdict = vote([], FLAT)
    assert verdict.route is None
    assert verdict.abstain_reason == "no_neighbours"
    assert verdict.predicted_output_tokens is None


def test_predicted_output_tokens_are_vote_weighted_over_known_lengths() -> None:
    verdict = vote([n("a", 0.9, 100), n("a", 0.9, None), n("b", 0.9, 400, weight=3.0)], FLAT)
    assert verdict.predicted_output_tokens == pytest.approx((100 + 3 * 400) / 4)
    assert vote([n("a", 0.9)], FLAT).predicted_output_tokens is None


def test_need_score_is_the_strong_minus_weak_evidence() -> None:
    config = VoteConfig(threshold=0.0, temperature=1e6, two_model=TwoModel())

    def need(neighbours: list[Neighbour]) -> float | None:
        return vote(neighbours, config).need_score

    assert need([n("strong", 0.9)] * 3) == pytest.approx(1.0)
    assert need([n("weak", 0.9)] * 3) == pytest.approx(0.0)
    mixed = [n("strong", 0.9), n("weak", 0.9), n("tie", 0.9), n("strong", 0.9)]
    assert need(mixed) == pytest.approx(0.5 + 0.5 * (2 / 4 - 1 / 4))
    assert need([n("tie", 0.9)]) == pytest.approx(0.5)
    # No evidence at all: the vote abstains without a need score; the formula's neutral
    # value for no probabilities is still 0.5.
    assert need([]) is None
    assert need_from_scores({}, TwoModel()) == pytest.approx(0.5)


def test_two_model_route_follows_the_need_threshold() -> None:
    config = VoteConfig(threshold=0.0, temperature=1e6, two_model=TwoModel(need_threshold=0.6))
    neighbours = [n("strong", 0.9), n("weak", 0.9), n("tie", 0.9), n("tie", 0.9)]
    verdict = vote(neighbours, config)
    assert verdict.need_score == pytest.approx(0.5)
    assert verdict.route == "weak"  # "tie" won the vote, but the need decides
    verdict = vote([*neighbours, n("strong", 0.9)], config)
    assert verdict.route == "strong"


def test_need_score_only_with_a_two_model_section() -> None:
    assert vote([n("strong", 0.9)], FLAT).need_score is None


def test_abstention_names_its_reason_and_no_route() -> None:
    shed = abstention(SHED)
    assert shed.route is None and shed.abstain_reason == SHED
    assert shed.neighbours == () and shed.predicted_output_tokens is None
    assert shed.need_score is None


def _config(raw: object, source: str = "settings") -> VoteConfig:
    return validate(VoteConfig, raw, source, section="classifier")


def test_config_validation_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"classifier\.temperature: -1\.0 must be positive"):
        _config({"temperature": -1})
    with pytest.raises(ConfigError, match=r"classifier\.tresholds"):
        _config({"tresholds": 0.5})
    with pytest.raises(ConfigError, match=r"settings\.yaml: classifier\.route_thresholds\.a"):
        _config({"route_thresholds": {"a": "high"}}, "settings.yaml")
    with pytest.raises(ConfigError, match=r"two_model"):
        _config({"two_model": {"weak": "x", "strong": "x"}})
    with pytest.raises(ValueError, match="k: 0 is not in"):
        VoteConfig(k=0)


def test_config_validation_roundtrips_a_dump() -> None:
    config = VoteConfig(k=7, threshold=0.4, route_thresholds={"a": 0.45}, two_model=TwoModel())
    assert _config(dataclasses.asdict(config)) == config
    assert config.threshold_for("a") == 0.45
    assert config.threshold_for("b") == 0.4


def test_config_validation_of_the_stage_keys() -> None:
    with pytest.raises(ConfigError, match=r"classifier\.decider"):
        _config({"decider": "forest"})
    with pytest.raises(ConfigError, match=r"classifier\.stage1_gate: 0\.0 is not in"):
        _config({"stage1_gate": 0})
    with pytest.raises(ConfigError, match=r"classifier\.head_threshold: 1\.5 is not in"):
        _config({"head_threshold": 1.5})
    config = _config({"decider": "head", "stage1_gate": None, "stage1_threshold": 0.4})
    assert (config.decider, config.stage1_gate, config.stage1_threshold) == ("head", None, 0.4)
    assert _config(dataclasses.asdict(config)) == config


def test_a_vote_names_its_stage() -> None:
    assert vote([n("a", 0.9)], FLAT).stage == STAGE_MODEL
    assert vote([n("a", 0.9)], FLAT, stage=STAGE_STATIC).stage == STAGE_STATIC
    assert vote([], FLAT).stage == STAGE_MODEL
    assert abstention(SHED).stage is None and not abstention(SHED).overloaded


HEAD = VoteConfig(k=10, threshold=0.5, route_thresholds={"b": 0.8})


@pytest.mark.parametrize(
    ("scores", "neighbours", "minimum", "route", "reason"),
    [
        ({"a": 0.7, "b": 0.3}, [n("a", 0.6, 100)], 0.0, "a", None),
        ({"a": 0.7, "b": 0.3}, [n("a", 0.6)], 0.8, None, LOW_PROBABILITY),
        ({OUT_OF_SCOPE: 0.6, "a": 0.4}, [n("a", 0.9)], 0.0, None, "out_of_scope"),
        ({"b": 0.9, "a": 0.1}, [n("b", 0.7)], 0.0, None, "below_threshold"),  # b needs 0.8
        ({"a": 0.9, "b": 0.1}, [n("b", 0.99)], 0.0, None, "below_threshold"),  # no a nearby
        ({"a": 0.9}, [], 0.0, "a", None),  # stage 1: no similarity check
    ],
)
def test_head_vote_applies_the_vote_checks(
    scores: dict[str, float],
    neighbours: list[Neighbour],
    minimum: float,
    route: str | None,
    reason: str | None,
) -> None:
    verdict = head_vote(scores, neighbours, HEAD, stage=STAGE_MODEL, min_probability=minimum)
    assert (verdict.route, verdict.abstain_reason) == (route, reason)
    assert verdict.confidence == max(scores.values())
    assert verdict.scores == scores and verdict.neighbours == tuple(neighbours)


def test_head_vote_margin_lengths_and_two_model() -> None:
    tight = dataclasses.replace(HEAD, threshold=-1.0, min_margin=0.3)
    low = head_vote({"a": 0.6, "b": 0.4}, [], tight, stage=STAGE_STATIC, min_probability=0.0)
    assert low.abstain_reason == "low_margin" and low.margin == pytest.approx(0.2)
    first = head_vote(
        {"a": 1.0}, [], HEAD, stage=STAGE_STATIC, min_probability=0, output_tokens=42.0,
        overloaded=True,
    )  # fmt: skip
    assert first.predicted_output_tokens == 42.0 and first.overloaded
    assert first.best_similarity == -1.0 and first.threshold == -1.0
    second = head_vote({"a": 1.0}, [n("a", 0.9, 10)], HEAD, stage=STAGE_MODEL, min_probability=0)
    assert second.predicted_output_tokens == 10  # from the neighbours, as the vote does
    two = dataclasses.replace(HEAD, threshold=-1.0, two_model=TwoModel(need_threshold=0.6))
    need = head_vote(
        {"strong": 0.5, "weak": 0.2, "tie": 0.3}, [], two, stage=STAGE_STATIC, min_probability=0
    )
    assert need.need_score == pytest.approx(0.65) and need.route == "strong"
    assert head_vote({}, [], HEAD, stage=1, min_probability=0).abstain_reason == "no_scores"

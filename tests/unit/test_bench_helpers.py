"""The benchmarks' pure helpers: load plans, percentiles, cost accounting, the derived Envoy
config (benchmarks/policies.py) and the output-length scoring (benchmarks/output_length.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from benchmarks import run, soak
from benchmarks.output_length import (
    LengthErrors,
    knn_predictions,
    length_errors,
    mean_errors,
    parse_response_row,
    prompt_length_fit,
    split_indices,
    within_factor,
)
from benchmarks.policies import (
    CHEAPEST,
    FASTEST,
    LOAD,
    PROVIDERS,
    SEED,
    STRATEGIES,
    TIER,
    LoadShape,
    Outcome,
    Strategy,
    StrategyResult,
    balanced_target,
    bench_envoy_config,
    percentile,
    plan,
    summarise,
)
from sidecar.config.envoy import catalogue_from_envoy_config, load_envoy_yaml
from sidecar.core.catalogue import Catalogue, Price, Provider
from sidecar.core.vote import Neighbour, VoteConfig
from sidecar.devstack.stack import StackPorts, render_config
from sidecar.errors import ConfigError

LOCAL = Path(__file__).resolve().parents[2] / "envoy" / "local.yaml"
CATALOGUE = Catalogue(
    providers=(
        Provider("cheap", "cheap", TIER, Price(1.0, 2.0)),
        Provider("fast", "fast", TIER, Price(10.0, 20.0)),
    ),
    clusters=frozenset({"cheap", "fast"}),
)


# --- percentiles and load plans -------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([float(v) for v in range(1, 101)], 0.99, 99.0),
        ([float(v) for v in range(1, 101)], 1.0, 100.0),
        ([5.0], 0.99, 5.0),
        ([4.0, 1.0], 0.5, 1.0),  # nearest rank: the first of two at the median
    ],
)
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_none_and_q_must_be_a_share() -> None:
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 0.0)


def test_a_plan_is_replayed_identically_for_the_same_seed() -> None:
    assert plan(LOAD, 7) == plan(LOAD, 7)
    assert plan(LOAD, 7) != plan(LOAD, 8)
    prompts = [p.prompt for p in plan(LOAD, 7)]
    assert len(set(prompts)) == len(prompts)  # distinct: no exact-repeat shortcut anywhere


def test_arrivals_come_only_at_the_rate_of_their_window() -> None:
    only_bursts = LoadShape(duration_s=10.0, base_rate=0.0, burst_rate=50.0, bursts=((2.0, 1.0),))
    requests = plan(only_bursts, 1)
    assert requests and all(2.0 <= p.at_s < 3.0 and p.in_burst for p in requests)
    no_bursts = LoadShape(duration_s=10.0, base_rate=20.0, burst_rate=0.0, bursts=((2.0, 1.0),))
    times = [p.at_s for p in plan(no_bursts, 1)]
    assert times == sorted(times) and all(0 <= t < 10.0 and not 2.0 <= t < 3.0 for t in times)


def test_the_shipped_load_bursts_above_the_cheap_provider_and_stays_within_it_on_average() -> None:
    cheap = PROVIDERS[0].capacity_per_s(64)
    requests = plan(LOAD, SEED)
    assert LOAD.burst_rate > 2 * cheap > 2 * LOAD.base_rate
    assert len(requests) / LOAD.duration_s < cheap
    assert 0.2 < sum(p.in_burst for p in requests) / len(requests) < 0.5


# --- strategies ------------------------------------------------------------------------


def test_policies_ask_the_router_and_baselines_name_the_provider() -> None:
    idle: Counter[str] = Counter()
    by_name = {s.name: s for s in STRATEGIES}
    assert by_name["balanced"].ask(0, idle) == ("auto", {"x-router-policy": "balanced"})
    assert by_name["always-cheapest"].ask(5, idle) == (CHEAPEST, {})
    assert by_name["always-fastest"].ask(5, idle) == (FASTEST, {})
    round_robin = [by_name["round-robin"].ask(n, idle)[0] for n in range(6)]
    assert round_robin == [p.name for p in PROVIDERS] * 2


def test_the_spill_over_oracle_takes_the_first_provider_with_a_free_slot() -> None:
    oracle = Strategy("oracle", models=("a", "b", "c"), slots=(2, 1, 5))
    assert oracle.ask(0, Counter()) == ("a", {})
    assert oracle.ask(0, Counter({"a": 2})) == ("b", {})
    assert oracle.ask(0, Counter({"a": 2, "b": 1})) == ("c", {})
    assert oracle.ask(0, Counter({"a": 9, "b": 9, "c": 9})) == ("c", {})  # all full: the last


# --- accounting ----------------------------------------------------------------------


def test_cost_is_usage_at_the_price_of_the_cluster_that_answered() -> None:
    outcomes = [
        Outcome(0.0, False, 200, 1.0, "cheap", prompt_tokens=1_000_000, completion_tokens=0),
        Outcome(0.1, True, 200, 3.0, "fast", prompt_tokens=0, completion_tokens=1_000_000),
        Outcome(0.2, True, 200, 2.0, "cheap", prompt_tokens=0, completion_tokens=500_000),
        Outcome(0.3, True, 503, 0.1, "fast", prompt_tokens=5, completion_tokens=5),  # not priced
        Outcome(0.4, True, None, 60.0),  # no answer
    ]
    result = summarise(outcomes, CATALOGUE)
    assert result.cost_usd == pytest.approx(1.0 + 20.0 + 1.0)
    assert (result.sent, result.errors) == (5, 2)
    assert result.share == {"cheap": pytest.approx(2 / 3), "fast": pytest.approx(1 / 3)}
    assert (result.p50_ms, result.p99_ms, result.burst_p99_ms) == (2000.0, 3000.0, 3000.0)


def test_an_answer_without_its_cluster_cannot_be_priced() -> None:
    with pytest.raises(ConfigError, match="x-router-upstream"):
        summarise([Outcome(0.0, False, 200, 1.0, None, 1, 1)], CATALOGUE)


def _result(p99_ms: float, cost: float, errors: int = 0) -> StrategyResult:
    return StrategyResult(100, errors, 100.0, p99_ms, p99_ms, cost)


@pytest.mark.parametrize(
    ("balanced", "met"),
    [
        (_result(2000.0, 1.10), True),
        (_result(2000.0, 1.11), False),  # too dear
        (_result(2600.0, 1.00), False),  # not twice better
        (_result(1000.0, 1.00, errors=1), False),  # errors do not count as fast
    ],
)
def test_the_balanced_target(balanced: StrategyResult, met: bool) -> None:
    results = {"balanced": balanced, "always-cheapest": _result(5000.0, 1.0)}
    assert balanced_target(results)["met"] is met


# --- the derived Envoy config ----------------------------------------------------------


def test_the_bench_config_swaps_the_providers_and_keeps_the_rest() -> None:
    local = load_envoy_yaml(LOCAL)
    config = bench_envoy_config(local, PROVIDERS)
    catalogue = catalogue_from_envoy_config(config, "bench")
    assert [p.cluster for p in catalogue.providers] == [p.name for p in PROVIDERS]
    assert {p.tier for p in catalogue.providers} == {TIER}
    assert all(p.model == p.cluster for p in catalogue.providers)
    assert catalogue.provider(CHEAPEST).price == Price(
        PROVIDERS[0].price_in, PROVIDERS[0].price_out
    )
    assert "sim-" not in str(config)
    assert "envoy.filters.http.ext_proc" in str(config) and "router_sidecar" in str(config)
    assert "sim-" in str(local)  # the source is not touched
    # The local stack can render it with its own ports, metrics URLs included.
    ports = StackPorts(providers={p.name: 20000 + i for i, p in enumerate(PROVIDERS)})
    rendered = catalogue_from_envoy_config(render_config(config, ports), "rendered")
    assert rendered.provider(FASTEST).metrics_url == "http://127.0.0.1:20002/metrics"


def test_a_changed_local_config_is_refused_rather_than_half_swapped() -> None:
    local = load_envoy_yaml(LOCAL)
    local["stats_config"] = {"stats_tags": [{"tag_name": "provider", "fixed_value": "sim-mid-a"}]}
    with pytest.raises(ConfigError, match="sim-mid-a"):
        bench_envoy_config(local, PROVIDERS)


# --- output length -------------------------------------------------------------------


def test_the_split_is_disjoint_stable_and_about_the_holdout() -> None:
    texts = [f"prompt {i}" for i in range(2000)]
    kept, held = split_indices(texts, 0.3)
    assert sorted(kept + held) == list(range(2000))
    assert (kept, held) == split_indices(texts, 0.3)
    assert 0.25 < len(held) / len(texts) < 0.35
    assert split_indices(texts, 0.3, salt="1") != (kept, held)
    with pytest.raises(ConfigError, match="holdout"):
        split_indices(texts, 1.0)


@pytest.mark.parametrize(
    ("predicted", "actual", "within"),
    [(10.0, 20.0, True), (40.0, 20.0, True), (9.9, 20.0, False), (41.0, 20.0, False),
     (0.0, 1.0, True), (3.0, 0.0, False)],
)  # fmt: skip
def test_within_a_factor_of_two(predicted: float, actual: float, within: bool) -> None:
    assert within_factor(predicted, actual) is within


def test_length_errors() -> None:
    errors = length_errors([10.0, 20.0, 100.0, 50.0], [10, 30, 40, 50])
    assert errors == LengthErrors(n=4, mae=17.5, median_abs_error=5.0, within_2x=0.75)
    with pytest.raises(ValueError, match="one prediction per"):
        length_errors([1.0], [1, 2])


def test_knn_predictions_are_the_vote_weighted_mean_of_known_lengths() -> None:
    config = VoteConfig(k=3, temperature=1e-3)
    rows = [
        (Neighbour("r", 0.9, 100), Neighbour("r", 0.5, 10)),  # the closest dominates
        (Neighbour("r", 0.9, None), Neighbour("r", 0.9, None)),  # nothing known: fallback
        (Neighbour("r", 0.8, 30), Neighbour("r", 0.8, 50)),
    ]
    assert knn_predictions(rows, config, fallback=7.0) == pytest.approx([100.0, 7.0, 40.0])


def test_prompt_length_fit_recovers_a_line_and_never_predicts_under_one_token() -> None:
    fitted = prompt_length_fit([10, 20, 30], [25, 45, 65], [40, -100])
    assert fitted == pytest.approx([85.0, 1.0])


def test_mean_errors_average_each_metric() -> None:
    runs = [LengthErrors(10, 2.0, 1.0, 0.5), LengthErrors(10, 4.0, 3.0, 1.0)]
    assert mean_errors(runs) == {"mae": 3.0, "median_abs_error": 2.0, "within_2x": 0.75}


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ([], "JSON object"),
        ({"text": " ", "responses": {"m": "a"}}, "'text'"),
        ({"text": "q", "responses": {}}, "'responses'"),
        ({"text": "q", "responses": {"m": 3}}, "'responses.m'"),
    ],
)
def test_bad_response_rows_name_the_field(row: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"f.jsonl:3: .*{problem}"):
        parse_response_row(row, "f.jsonl:3")


def test_a_good_response_row() -> None:
    row = parse_response_row({"text": "q", "responses": {"m": "a"}, "outcomes": {}}, "f:1")
    assert (row.text, dict(row.responses)) == ("q", {"m": "a"})


def test_the_soak_tells_a_cut_answer_from_a_lost_one() -> None:
    outcomes = [
        soak.Outcome(sent_at=0.0, kind="auto", status=200, latency_s=0.1, route="small"),
        soak.Outcome(sent_at=0.1, kind="stream", status=200, cut=True, error="ClientPayloadError"),
        soak.Outcome(sent_at=0.2, kind="auto", error="ClientConnectorError"),
    ]
    assert soak.summarise(outcomes)["by_status"] == {"200": 1, "cut": 1, "lost": 1}
    healthy = [soak.Outcome(sent_at=i, kind="auto", status=200, route="small") for i in range(3)]
    after = soak.Outcome(sent_at=5, kind="stream", status=200, route="small", cut=True)
    between = soak.Outcome(sent_at=0.5, kind="stream", status=200, route="small", cut=True)
    assert soak.recovery_s([*healthy, after], after_s=0.0, streak=3) == 0.0
    assert soak.recovery_s([*healthy, between], after_s=0.0, streak=3) is None  # not whole


def test_the_matrix_plot_is_written_from_the_results(tmp_path: Path) -> None:
    cell = {"decisions_per_s": 100.0, "p99_ms": 10.0}
    cells = {str(n): cell for n in run.MATRIX_STREAMS}
    matrix = {"prompt_30_tokens": cells, "explicit_model": {"1": cell}}
    results: dict[str, object] = {"semantic": {"matrix": matrix}, "no_semantic": {}}
    run.plot_matrix(results, tmp_path / "matrix.png")
    assert (tmp_path / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

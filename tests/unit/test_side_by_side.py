"""The side-by-side benchmark's pure helpers (benchmarks/side_by_side.py): cell summaries,
ratios to the baseline, and the configs it derives for Envoy alone, the router and LiteLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import benchmarks.side_by_side as side_by_side
from benchmarks.side_by_side import (
    BASELINE,
    LOCAL,
    ROUTER_FILTERS,
    SIM_SLOTS,
    SIM_TOKENS_PER_S,
    SIM_TTFT_MS,
    Cell,
    bench_envoy_config,
    body,
    envoy_alone_config,
    litellm_config,
    null_processor_config,
    ratios,
    start_litellm,
    summarise_cell,
)
from sidecar.config.envoy import (
    EXT_PROC_FILTER,
    catalogue_from_envoy_config,
    load_envoy_yaml,
    walk_mappings,
)


def _cell(p50: float, p99: float, rate: float) -> Cell:
    return Cell(100, 0, 1.0, p50, p50, p99, rate)


def test_summarise_cell_gives_nearest_rank_quantiles_in_ms_and_the_answered_rate() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    cell = summarise_cell(latencies, errors=4, seconds=2.0)
    assert (cell.p50_ms, cell.p90_ms, cell.p99_ms) == (50.0, 90.0, 99.0)
    assert cell.requests == 104 and cell.errors == 4
    assert cell.requests_per_s == 50.0  # answered requests only


def test_summarise_cell_without_answers_or_time_has_no_quantiles_and_no_rate() -> None:
    cell = summarise_cell([], errors=3, seconds=0.0)
    assert (cell.p50_ms, cell.p90_ms, cell.p99_ms) == (None, None, None)
    assert cell.requests_per_s == 0.0 and cell.requests == 3


def test_ratios_divide_by_the_baseline_at_the_same_concurrency() -> None:
    cells = {
        BASELINE: {1: _cell(10.0, 20.0, 100.0), 8: _cell(20.0, 40.0, 400.0)},
        "router": {1: _cell(15.0, 30.0, 80.0), 8: _cell(30.0, 100.0, 200.0)},
    }
    table = ratios(cells)
    assert table[BASELINE][1] == {"p50": 1.0, "p90": 1.0, "p99": 1.0, "requests_per_s": 1.0}
    assert table["router"][1] == {"p50": 1.5, "p90": 1.5, "p99": 1.5, "requests_per_s": 0.8}
    assert table["router"][8]["p99"] == 2.5 and table["router"][8]["requests_per_s"] == 0.5


def test_ratios_are_none_where_the_baseline_has_no_value() -> None:
    cells = {
        BASELINE: {1: Cell(5, 5, 1.0, None, None, None, 0.0)},
        "router": {1: _cell(15.0, 30.0, 80.0), 32: _cell(1.0, 2.0, 3.0)},
    }
    table = ratios(cells)
    assert table["router"][1] == {"p50": None, "p90": None, "p99": None, "requests_per_s": None}
    assert table["router"][32]["p50"] is None  # no baseline cell at 32


def test_bench_config_simulates_every_provider_alike_and_keeps_the_catalogue() -> None:
    local = load_envoy_yaml(LOCAL)
    config = bench_envoy_config(local)
    catalogue = catalogue_from_envoy_config(config, "bench")
    assert [p.cluster for p in catalogue.providers] == [
        p.cluster for p in catalogue_from_envoy_config(local, "local").providers
    ]
    for provider in catalogue.providers:
        assert provider.ttft_s == pytest.approx(SIM_TTFT_MS / 1000)
        assert provider.tokens_per_s == SIM_TOKENS_PER_S
        assert provider.max_concurrency == SIM_SLOTS


def _filters(config: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for node in walk_mappings(config):
        filters = node.get("http_filters")
        if isinstance(filters, list):
            names += [f["name"] for f in filters]
    return names


def test_envoy_alone_has_no_router_and_one_static_route_to_the_simulator() -> None:
    local = load_envoy_yaml(LOCAL)
    assert EXT_PROC_FILTER in _filters(dict(local))
    config = envoy_alone_config(local, "sim-mid-a", listener=18080, admin=19901)
    assert not set(_filters(config)) & set(ROUTER_FILTERS)
    assert _filters(config) == ["envoy.filters.http.router"]
    assert "upstream_log" not in str(config)
    assert "router_sidecar" not in str(config)
    static = config["static_resources"]
    assert [c["name"] for c in static["clusters"]] == ["sim-mid-a"]
    (listener,) = static["listeners"]  # the API listener; not Envoy's metrics listener
    assert listener["address"]["socket_address"]["port_value"] == 18080
    assert config["admin"]["address"]["socket_address"]["port_value"] == 19901
    hcm: dict[str, Any] = next(n for n in walk_mappings(config) if "route_config" in n)
    (host,) = hcm["route_config"]["virtual_hosts"]
    assert host["routes"] == [
        {"match": {"prefix": "/"}, "route": {"cluster": "sim-mid-a", "timeout": "120s"}}
    ]
    assert EXT_PROC_FILTER in _filters(dict(local))  # the source is left as it was


def test_the_null_processor_row_is_envoy_alone_plus_the_shipped_ext_proc_filter() -> None:
    local = load_envoy_yaml(LOCAL)
    config = null_processor_config(local, "sim-mid-a", 18080, 19901, processor=17000)
    assert _filters(config) == [EXT_PROC_FILTER, "envoy.filters.http.router"]
    shipped: Any = next(n for n in walk_mappings(dict(local)) if n.get("name") == EXT_PROC_FILTER)
    used: Any = next(n for n in walk_mappings(config) if n.get("name") == EXT_PROC_FILTER)
    shipped_options = dict(shipped["typed_config"], grpc_service=None)
    assert dict(used["typed_config"], grpc_service=None) == shipped_options
    assert used["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "null_processor"
    (null,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "null_processor"]
    assert "health_checks" not in null
    assert "port_value: 17000" in yaml.safe_dump(null["load_assignment"], default_flow_style=False)
    assert "router_sidecar" not in str(config)


def test_envoy_alone_rejects_an_unknown_cluster() -> None:
    with pytest.raises(ValueError, match="no-such"):
        envoy_alone_config(load_envoy_yaml(LOCAL), "no-such", listener=1, admin=2)


def test_litellm_config_lists_the_simulator_as_one_openai_deployment() -> None:
    config = litellm_config("llama-3.3-70b-instruct", 8101, "latency-based-routing")
    (deployment,) = config["model_list"]
    assert deployment["model_name"] == "bench"
    assert deployment["litellm_params"]["model"] == "openai/llama-3.3-70b-instruct"
    assert deployment["litellm_params"]["api_base"] == "http://127.0.0.1:8101/v1"
    assert config["router_settings"] == {"routing_strategy": "latency-based-routing"}
    assert config["litellm_settings"]["telemetry"] is False


def test_body_asks_for_one_token_with_the_prompt_of_request_i() -> None:
    make = body("auto", lambda i: f"prompt {i}")
    assert make(7) == {
        "model": "auto",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "prompt 7"}],
    }


def test_without_litellm_installed_its_rows_are_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(side_by_side, "LITELLM", tmp_path / "bin" / "litellm")
    reason = start_litellm(sim_port=1, model="m", workdir=tmp_path)
    assert isinstance(reason, str) and "make litellm" in reason

"""The resilience settings of both shipped Envoy files, checked as data (no Envoy runs).

Envoy validates the files (test_envoy_configs.py); these checks hold the parts that must
agree with each other or with the catalogue: every provider cluster is health-checked and
can be ejected, every route that reaches a provider has its timeouts and retries, a
failover aggregate only joins clusters serving the same model id, and the fail-open
target is a real provider with its real model id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.envoy import catalogue_from_envoy_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "envoy" / "local.yaml", ROOT / "envoy" / "production.yaml"]
LUA = "envoy.filters.http.lua"
AGGREGATE = "envoy.clusters.aggregate"


def _load(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _routes(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for host in _hcm(config)["route_config"]["virtual_hosts"]:
        yield from host["routes"]


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _members(cluster: dict[str, Any]) -> list[str]:
    cluster_type = cluster.get("cluster_type", {})
    if cluster_type.get("name") != AGGREGATE:
        return []
    members: list[str] = cluster_type["typed_config"]["clusters"]
    return members


def _edge_script(config: dict[str, Any]) -> str:
    lua = next(f for f in _hcm(config)["http_filters"] if f["name"] == LUA)
    script: str = lua["typed_config"]["source_codes"]["router-edge.lua"]["inline_string"]
    return script


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_provider_is_health_checked_and_can_be_ejected(path: Path) -> None:
    config = _load(path)
    catalogue = catalogue_from_envoy_config(config, str(path))
    clusters = _clusters(config)
    for provider in catalogue.providers:
        cluster = clusters[provider.cluster]
        checks = cluster["health_checks"]
        assert checks and all("http_health_check" in check for check in checks), provider
        assert all("no_traffic_interval" in check for check in checks), provider
        outlier = cluster["outlier_detection"]
        assert outlier["max_ejection_percent"] == 100, provider  # one host must be ejectable
        assert outlier["enforcing_consecutive_gateway_failure"] == 100, provider
        assert outlier["successful_active_health_check_uneject_host"] is False, provider
        assert cluster["circuit_breakers"]["thresholds"][0]["retry_budget"], provider


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_route_to_a_provider_has_timeouts_and_retries(path: Path) -> None:
    config = _load(path)
    clusters = _clusters(config)
    assert "x-router-stream" in _hcm(config)["route_config"]["internal_only_headers"]
    for route in _routes(config):
        action = route.get("route")
        if action is None:
            assert route["direct_response"]["status"] == 404  # the only other action
            continue
        headers = {h["name"] for h in route["match"].get("headers", [])}
        if "x-router-stream" in headers:
            assert (action["timeout"], action["idle_timeout"]) in {("600s", "30s"), ("600s", "60s")}
        elif route["match"].get("path") != "/v1/models":
            assert action["timeout"] == "120s", route["match"]
        retry = action["retry_policy"]
        assert {"connect-failure", "reset", "refused-stream"} <= set(retry["retry_on"].split(","))
        assert 503 in retry["retriable_status_codes"]
        assert retry["retry_back_off"]["base_interval"]
        # 429 only where the retry can go to another provider of the same model.
        failover = bool(_members(clusters.get(action.get("cluster", ""), {})))
        assert (429 in retry["retriable_status_codes"]) == failover, route["match"]
        if failover:
            assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_failover_joins_only_clusters_serving_the_same_model(path: Path) -> None:
    config = _load(path)
    catalogue = catalogue_from_envoy_config(config, str(path))
    aggregates = {name: _members(c) for name, c in _clusters(config).items() if _members(c)}
    for name, members in aggregates.items():
        assert len({catalogue.provider(member).model for member in members}) == 1, name
    # Each provider that has a sibling with its model id fails over through an aggregate
    # that tries it first.
    first = {members[0]: name for name, members in aggregates.items()}
    for provider in catalogue.providers:
        siblings = [p for p in catalogue.providers if p.model == provider.model]
        assert (len(siblings) > 1) == (provider.cluster in first), provider.cluster
    for route in _routes(config):
        for header in route["match"].get("headers", []):
            exact = header.get("string_match", {}).get("exact")
            if header["name"] == "x-router-upstream" and exact in first:
                assert route["route"]["cluster"] == first[exact]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_fail_open_target_is_a_provider_with_its_model_id(path: Path) -> None:
    config = _load(path)
    catalogue = catalogue_from_envoy_config(config, str(path))
    host = _hcm(config)["route_config"]["virtual_hosts"][0]
    context = host["typed_per_filter_config"][LUA]["filter_context"]
    assert catalogue.provider(context["cluster"]).model == context["model"]
    undecided = [r for r in _routes(config) if "path" in r["match"] and "route" in r]
    assert {r["match"]["path"] for r in undecided} >= {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    }
    assert {r["route"]["cluster"] for r in undecided} == {context["cluster"]}
    assert all("response_headers_to_add" not in r for r in undecided)  # no decision here


def test_both_files_run_the_same_edge_script() -> None:
    local, production = (_edge_script(_load(path)) for path in CONFIGS)
    assert local == production

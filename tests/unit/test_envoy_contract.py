"""The shipped Envoy configs and the sidecar agree on the one-message ext_proc exchange.

Envoy sends the router's filter no headers phase: what the router reads of the headers
must be among the filter's `request_attributes`, its answer comes back as dynamic
metadata that the edge script applies, and the two routes that need headers (the model
list, and the cascade's held answer) ask for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config.envoy import (
    DECISION_NAMESPACE,
    EXT_PROC_FILTER,
    PATH_ATTRIBUTE,
    header_attribute,
    walk_mappings,
)
from sidecar.config.files import read_yaml_mapping
from sidecar.serving.cascade import TICKET_HEADER
from sidecar.serving.service import MAX_COST_HEADER, MAX_LATENCY_HEADER, POLICY_HEADER

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["local.yaml", "production.yaml"]


def _config(name: str) -> dict[str, Any]:
    return read_yaml_mapping(ROOT / "envoy" / name, "the Envoy config")


def _mappings(config: dict[str, Any]) -> list[Any]:
    """Every mapping in the config, loosely typed for reading."""
    return list(walk_mappings(config))


def _router_filter(config: dict[str, Any]) -> Any:
    (found,) = [m["typed_config"] for m in _mappings(config) if m.get("name") == EXT_PROC_FILTER]
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_the_router_filter_sends_the_body_with_the_headers_it_reads(name: str) -> None:
    ext_proc = _router_filter(_config(name))
    assert ext_proc["processing_mode"]["request_header_mode"] == "SKIP"
    assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
    attributes = set(ext_proc["request_attributes"])
    read = {POLICY_HEADER, MAX_COST_HEADER, MAX_LATENCY_HEADER, TICKET_HEADER}
    assert {PATH_ATTRIBUTE} | {header_attribute(h) for h in read} <= attributes
    assert "request.headers['x-router-policy']" in attributes  # Envoy's CEL, spelled out
    namespaces = ext_proc["metadata_options"]["receiving_namespaces"]["untyped"]
    assert namespaces == [DECISION_NAMESPACE]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_edge_script_applies_the_decision_and_the_body_length(name: str) -> None:
    (lua,) = [
        m["typed_config"]["source_codes"]["router-edge.lua"]["inline_string"]
        for m in _mappings(_config(name))
        if m.get("name") == "envoy.filters.http.lua"
    ]
    assert f'dynamicMetadata():get("{DECISION_NAMESPACE}")' in lua
    assert 'headers:replace("content-length", tostring(body:length()))' in lua
    assert '"code": "no_body"' in lua


@pytest.mark.parametrize("name", CONFIGS)
def test_the_routes_that_need_headers_ask_for_them(name: str) -> None:
    config = _config(name)
    models = [m for m in _mappings(config) if m.get("match", {}).get("path") == "/v1/models"]
    assert models
    for route in models:
        override = route["typed_per_filter_config"][EXT_PROC_FILTER]["overrides"]
        assert override["processing_mode"]["request_header_mode"] == "SEND"
    held = [
        m["typed_per_filter_config"]["inference_router.cascade"]
        for m in _mappings(config)
        if "inference_router.cascade" in m.get("typed_per_filter_config", {})
    ]
    assert held
    for hold in held:  # an escalation forwards the client's headers: all of them
        assert hold["overrides"]["processing_mode"]["request_header_mode"] == "SEND"

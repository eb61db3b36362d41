from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config.envoy import catalogue_from_envoy_config, load_catalogue
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _cluster(name: str, **meta: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model": f"{name}-model",
        "tier": "small",
        "price_per_mtok": {"input": 1.0, "output": 2.0},
    }
    base.update(meta)
    return {"name": name, "metadata": {"filter_metadata": {"inference_router": base}}}


def _config(*clusters: dict[str, object]) -> dict[str, object]:
    return {"static_resources": {"clusters": [{"name": "router_sidecar"}, *clusters]}}


def test_local_config_catalogue() -> None:
    catalogue = load_catalogue(ROOT / "envoy" / "local.yaml")
    assert {p.cluster for p in catalogue.providers} == {
        "sim-small",
        "sim-mid-a",
        "sim-mid-b",
        "sim-frontier",
    }
    assert "router_sidecar" in catalogue.clusters
    assert [p.cluster for p in catalogue.serving("llama-3.3-70b-instruct")] == [
        "sim-mid-a",
        "sim-mid-b",
    ]
    assert catalogue.provider("sim-frontier").price.cost_usd(1_000_000, 0) == 2.5


def test_missing_field_names_cluster_and_field() -> None:
    broken = _cluster("bad")
    del broken["metadata"]["filter_metadata"]["inference_router"]["tier"]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"cluster 'bad'.*inference_router\.tier"):
        catalogue_from_envoy_config(_config(broken), "test.yaml")


def test_negative_price_is_refused() -> None:
    broken = _cluster("bad", price_per_mtok={"input": -1, "output": 2})
    with pytest.raises(ConfigError, match=r"price_per_mtok\.input"):
        catalogue_from_envoy_config(_config(broken), "test.yaml")


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cluster 'bad'.*prise"):
        catalogue_from_envoy_config(_config(_cluster("bad", prise=3)), "test.yaml")


def test_duplicate_and_missing_providers() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        catalogue_from_envoy_config(_config(_cluster("a"), _cluster("a")), "t.yaml")
    with pytest.raises(ConfigError, match="no cluster carries"):
        catalogue_from_envoy_config(_config(), "t.yaml")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalogue(bad)
    bad.write_text(yaml.safe_dump({"static_resources": {"clusters": "nope"}}))
    with pytest.raises(ConfigError, match="not a list"):
        load_catalogue(bad)

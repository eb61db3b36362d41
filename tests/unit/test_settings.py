from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config.settings import load_settings
from sidecar.core.policy import Policy
from sidecar.errors import ConfigError


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_relative_envoy_path(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, {"envoy_config": "envoy.yaml"}), {})
    assert settings.envoy_config == tmp_path / "envoy.yaml"
    assert settings.default_policy is Policy.BALANCED
    assert settings.routing_table().tiers == ("small", "mid", "frontier")
    assert settings.classifier.k >= 1


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, {"envoy_config": "a.yaml", "listen": "127.0.0.1:1"})
    settings = load_settings(path, {"listen": "127.0.0.1:2", "admin_listen": None})
    assert settings.listen == "127.0.0.1:2"
    assert settings.admin_listen == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"envoy_config": "a", "tierz": ["x"]}, "tierz"),
        ({"envoy_config": "a", "semantic": {"threads": 0}}, "semantic.threads"),
        ({"envoy_config": "a", "classifier": {"k": 0}}, r"classifier\.k: 0 is not in"),
        ({"envoy_config": "a", "classifier": {"tresholds": 0.5}}, r"classifier\.tresholds"),
        ({"envoy_config": "a", "default_policy": "fastest"}, "default_policy"),
        ({"envoy_config": "a", "semantic": {"onnx_model": "m.onnx"}}, "tokenizer"),
        ({}, "envoy_config"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, data: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(_write(tmp_path, data), {})


def test_unreadable_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", {})
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(_write(tmp_path, [1, 2]), {})

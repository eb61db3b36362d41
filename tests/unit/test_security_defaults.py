"""Secure by default: the sidecar's ports and Envoy's admin listen on loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.files import read_yaml_mapping
from sidecar.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_sidecar_listens_on_loopback_unless_told_otherwise() -> None:
    settings = Settings.model_validate({"envoy_config": "envoy/local.yaml"})
    assert settings.listen.startswith("127.0.0.1:")
    assert settings.admin_listen.startswith("127.0.0.1:")
    assert settings.log_prompts is False


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_envoy_admin_listens_on_loopback(name: str) -> None:
    config = read_yaml_mapping(ROOT / "envoy" / name, "the Envoy config")
    admin = config["admin"]
    assert isinstance(admin, dict)
    assert admin["address"]["socket_address"]["address"] == "127.0.0.1"

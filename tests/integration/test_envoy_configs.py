"""Every Envoy YAML we ship passes Envoy's own validation, and the sidecar refuses bad ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.devstack.stack import envoy_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "envoy").glob("*.yaml"))
SECRETS_DIR = "/etc/envoy/secrets/"


def _with_test_secrets(config: Path, tmp_path: Path) -> Path:
    """Point SDS secret paths at files made here; validation needs them to exist."""
    text = config.read_text()
    if SECRETS_DIR not in text:
        return config
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for path in sorted(set(re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", text))):
        name = path.removesuffix(".yaml")
        resource = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": f"{name}-api-key",
            "generic_secret": {"secret": {"inline_string": "Bearer test-key"}},
        }
        (secrets / path).write_text(yaml.safe_dump({"resources": [resource]}))
    rendered = tmp_path / config.name
    rendered.write_text(text.replace(SECRETS_DIR, f"{secrets}/"))
    return rendered


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_envoy_validates(config: Path, tmp_path: Path) -> None:
    target = _with_test_secrets(config, tmp_path)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(target), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_sidecar_accepts_shipped_catalogues(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--envoy-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_broken_provider_metadata_stops_the_sidecar(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "envoy" / "local.yaml").read_text())
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "sim-mid-b":
            del cluster["metadata"]["filter_metadata"]["inference_router"]["price_per_mtok"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--no-semantic",
            "--envoy-config",
            str(broken),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "sim-mid-b" in result.stderr and "price_per_mtok" in result.stderr


def test_route_to_missing_cluster_stops_the_sidecar(tmp_path: Path) -> None:
    settings = tmp_path / "sidecar.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "envoy_config": str(ROOT / "envoy" / "local.yaml"),
                "routes": {"code": {"clusters": ["sim-coder"]}},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(settings)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "routes.code" in result.stderr and "sim-coder" in result.stderr

"""`inference-router check`: validate the settings and the Envoy provider catalogue."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "validate settings and the Envoy provider catalogue"
DEFAULT_ENVOY_CONFIG = Path("envoy/local.yaml")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router check`."""
    parser.add_argument("--config", type=Path, help="sidecar settings YAML")
    parser.add_argument("--envoy-config", type=Path, help=f"default {DEFAULT_ENVOY_CONFIG}")


def run(args: argparse.Namespace) -> int:
    """Load everything the sidecar would load at start and print the providers."""
    from sidecar.config.envoy import load_catalogue
    from sidecar.config.settings import load_settings

    envoy_config = args.envoy_config or (None if args.config else DEFAULT_ENVOY_CONFIG)
    settings = load_settings(args.config, {"envoy_config": envoy_config})
    catalogue = load_catalogue(settings.envoy_config)
    settings.routing_table().validate(catalogue)
    for provider in catalogue.providers:
        print(f"{provider.cluster}: model={provider.model} tier={provider.tier}")
    print(f"{settings.envoy_config}: OK, {len(catalogue.providers)} provider clusters")
    return 0

"""`inference-router envoy tracing`: a copy of an Envoy config that sends spans over OTLP.

`envoy/local.yaml` carries no tracing block, so `make run` costs nothing when no
collector is there. When there is one, the config is rendered with Envoy's OpenTelemetry
tracer on every HTTP connection manager and a cluster for the collector: `make run` does
it in process when OTEL_EXPORTER_OTLP_ENDPOINT is set, and this command does the same for
anything else that runs the file, such as the Kubernetes dev overlay, whose init
container writes the traced copy that its Envoy reads. The source file is not changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a copy of an Envoy config with OpenTelemetry tracing to a collector"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router envoy tracing`."""
    parser.add_argument("source", type=Path, help="the Envoy config to read")
    parser.add_argument("target", type=Path, help="where to write the traced copy")
    parser.add_argument(
        "--otlp-endpoint",
        required=True,
        help="the OTLP/gRPC collector, http://host:port (e.g. http://jaeger:4317)",
    )


def run(args: argparse.Namespace) -> int:
    """Render the traced copy and write it atomically."""
    import yaml

    from sidecar.config.envoy import catalogue_from_envoy_config, load_envoy_yaml
    from sidecar.config.files import write_text_atomically
    from sidecar.devstack.stack import enable_tracing, otlp_address

    host, port = otlp_address(args.otlp_endpoint, "--otlp-endpoint")
    config = load_envoy_yaml(args.source)
    catalogue_from_envoy_config(config, str(args.source))  # refuse a config the router would
    enable_tracing(config, host, port)
    write_text_atomically(args.target, yaml.safe_dump(config, sort_keys=False))
    print(f"{args.target}: {args.source} with spans to {host}:{port}")
    return 0

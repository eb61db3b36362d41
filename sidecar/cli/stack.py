"""`inference-router stack`: run Envoy, the sidecar and simulated providers in the foreground.

A child that dies is restarted (with backoff) while the others keep serving, so killing
the sidecar shows Envoy's fail-open instead of stopping everything.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from sidecar.cli.check import DEFAULT_ENVOY_CONFIG
from sidecar.cli.lifecycle import until_stop_signal

HELP = "run Envoy, the sidecar and simulated providers"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router stack`."""
    parser.add_argument("--envoy-config", type=Path, default=DEFAULT_ENVOY_CONFIG)
    parser.add_argument("--config", type=Path, help="sidecar settings YAML")
    parser.add_argument("--port", type=int, default=8080, help="Envoy listener port")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--metrics-port", type=int, default=9902, help="Envoy's /metrics")
    parser.add_argument("--sidecar-port", type=int, default=50051)
    parser.add_argument("--sidecar-admin-port", type=int, default=9464)
    parser.add_argument("--provider-base-port", type=int, default=8101)
    parser.add_argument("--no-semantic", action="store_true")
    parser.add_argument(
        "--shaky-share",
        type=float,
        default=0.3,
        help="share of prompts the cheapest simulator answers shakily (a cascade escalates them)",
    )


def run(args: argparse.Namespace) -> int:
    """Start the stack on the given ports and keep it up, restarting what dies, until Ctrl-C."""
    from sidecar.config.envoy import load_catalogue
    from sidecar.devstack.stack import LocalStack, StackPorts
    from sidecar.devstack.supervision import RestartPolicy, Supervisor

    catalogue = load_catalogue(args.envoy_config)
    ports = StackPorts(
        listener=args.port,
        admin=args.admin_port,
        sidecar=args.sidecar_port,
        sidecar_admin=args.sidecar_admin_port,
        providers={
            p.cluster: args.provider_base_port + i for i, p in enumerate(catalogue.providers)
        },
        envoy_metrics=args.metrics_port,
    )
    sidecar_args = ["--no-semantic"] if args.no_semantic else []
    if args.config:
        sidecar_args += ["--config", str(args.config)]
    # The cheapest provider answers some prompts shakily, so a cascade (router:cost) can be
    # seen escalating them: x-router-cascade: small(0.41)>mid.
    cheapest = min(catalogue.providers, key=lambda p: p.price.output_per_mtok).cluster
    stack = LocalStack(
        args.envoy_config,
        ports,
        sidecar_args=sidecar_args,
        shaky_share={cheapest: args.shaky_share},
    )
    stack.start()
    supervisor = Supervisor(stack, RestartPolicy(time.monotonic))
    try:
        admin = f"http://127.0.0.1:{stack.ports.sidecar_admin}"
        lines = [
            "\ninference-router local stack is up:",
            f"  OpenAI API (Envoy)   {stack.base_url}/v1/chat/completions",
            f"  Envoy admin          http://127.0.0.1:{stack.ports.admin}/",
            f"  Envoy metrics        http://127.0.0.1:{stack.ports.envoy_metrics}/metrics",
            f"  router sidecar gRPC  {stack.sidecar_target}",
            f"  router live view     {admin}/",
            f"  router metrics       {admin}/metrics",
        ]
        if not args.config:  # the stack's own settings read the simulator's price table
            lines.append(f"  price table (PUT)    {stack.price_url}")
        lines += [
            "Try:",
            f"  curl -s {stack.base_url}/v1/chat/completions "
            '-d \'{"model":"auto","messages":[{"role":"user","content":"hi"}]}\'',
            "A child that dies is restarted; Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)
        asyncio.run(until_stop_signal(supervisor.step))
    finally:
        stack.stop()
    return 0

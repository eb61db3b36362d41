"""`inference-router simulate`: run one OpenAI-compatible provider simulator."""

from __future__ import annotations

import argparse
import asyncio

from sidecar.cli.lifecycle import until_stop_signal
from sidecar.errors import ConfigError
from sidecar.simulator.answer import STYLES
from sidecar.simulator.config import SimulatorConfig
from sidecar.simulator.errors import SimulatorConfigError

HELP = "run an OpenAI-compatible provider simulator"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `inference-router simulate` options to `parser`."""
    parser.add_argument("--name", required=True, help="provider name, sent as x-sim-name")
    parser.add_argument("--model", required=True, help="model id served and listed")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=200.0, help="generation speed")
    parser.add_argument("--concurrency", type=int, default=4, help="requests run at once")
    parser.add_argument("--max-queue", type=int, default=256, help="requests queued before 429")
    parser.add_argument("--style", choices=STYLES, default="lorem", help="kind of answer text")
    parser.add_argument(
        "--weak-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="prompts matching this regex get weak, low-logprob answers (repeatable)",
    )
    parser.add_argument(
        "--shaky-share",
        type=float,
        default=0.0,
        help="share of prompts (fixed per prompt) answered shakily: plain text, low logprobs",
    )
    parser.add_argument(
        "--default-max-tokens", type=int, default=4096, help="output cap without max_tokens"
    )
    parser.add_argument("--seed", type=int, default=0, help="varies answers between providers")
    parser.add_argument(
        "--check-model",
        action="store_true",
        help="refuse any model but --model with 404 model_not_found, as a real provider does",
    )
    parser.add_argument(
        "--accept-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --check-model: another name to accept, e.g. auto (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig the parsed command line describes."""
    return SimulatorConfig(
        name=args.name,
        model=args.model,
        ttft_s=args.ttft_ms / 1000.0,
        tokens_per_s=args.tokens_per_s,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        style=args.style,
        weak_patterns=tuple(args.weak_pattern),
        shaky_share=args.shaky_share,
        default_max_tokens=args.default_max_tokens,
        seed=args.seed,
        check_model=args.check_model,
        accept_models=tuple(args.accept_model),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    try:
        asyncio.run(_serve(config_from_args(args), args.host, args.port))
    except SimulatorConfigError as error:
        raise ConfigError(str(error)) from error
    return 0


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    from sidecar.simulator.server import start

    runner, _ = await start(config, host, port)
    try:
        await until_stop_signal()
    finally:
        await runner.cleanup()

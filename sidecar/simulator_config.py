"""How one simulated provider is configured: the frozen config and its command-line form.

`SimulatorConfig` validates itself on construction, so a bad value fails at start with a
`ConfigError` that names the field, never halfway through serving.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

from sidecar.errors import ConfigError
from sidecar.simulator_answer import STYLES, Style


@dataclass(frozen=True)
class SimulatorConfig:
    """One simulated provider: its name, model, speed, capacity and answering style."""

    name: str
    model: str
    ttft_s: float = 0.05
    tokens_per_s: float = 200.0
    concurrency: int = 4
    max_queue: int = 256
    style: Style = "lorem"
    weak_patterns: tuple[str, ...] = ()  # case-insensitive regexes the model answers badly
    default_max_tokens: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        where = f"simulator {self.name!r}"
        if not self.name or not self.model:
            raise ConfigError(f"{where}: 'name' and 'model' must be non-empty")
        if not (math.isfinite(self.ttft_s) and self.ttft_s >= 0):
            raise ConfigError(f"{where}: 'ttft_s' must be a finite number >= 0, got {self.ttft_s}")
        if not (math.isfinite(self.tokens_per_s) and self.tokens_per_s > 0):
            raise ConfigError(
                f"{where}: 'tokens_per_s' must be a finite number > 0, got {self.tokens_per_s}"
            )
        if self.concurrency < 1:
            raise ConfigError(f"{where}: 'concurrency' must be >= 1, got {self.concurrency}")
        if self.max_queue < 0:
            raise ConfigError(f"{where}: 'max_queue' must be >= 0, got {self.max_queue}")
        if self.default_max_tokens < 1:
            raise ConfigError(f"{where}: 'default_max_tokens' must be >= 1")
        if self.style not in STYLES:
            raise ConfigError(f"{where}: 'style' must be one of {', '.join(STYLES)}")
        compile_weak_patterns(self.weak_patterns)


def compile_weak_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """The weak patterns compiled case-insensitively; ConfigError names a bad one."""
    compiled: list[re.Pattern[str]] = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(f"simulator weak pattern {pattern!r} is not a regex: {exc}") from exc
    return tuple(compiled)


def configure_parser(parser: argparse.ArgumentParser) -> None:
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
        "--default-max-tokens", type=int, default=4096, help="output cap without max_tokens"
    )
    parser.add_argument("--seed", type=int, default=0, help="varies answers between providers")


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
        default_max_tokens=args.default_max_tokens,
        seed=args.seed,
    )

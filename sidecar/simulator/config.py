"""How one simulated provider is configured: a frozen config that validates itself.

`SimulatorConfig` validates itself on construction, so a bad value fails at start with a
`SimulatorConfigError` that names the field, never halfway through serving.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sidecar.simulator.answer import STYLES, Style
from sidecar.simulator.errors import SimulatorConfigError


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
    # The share of prompts (fixed per prompt, by hash) the model answers shakily: ordinary
    # text with low logprobs, what a cascade's evaluator should catch.
    shaky_share: float = 0.0
    default_max_tokens: int = 4096
    seed: int = 0
    # Refuse a `model` other than `model` and `accept_models` with 404 model_not_found, as
    # a real provider does (so a wrong rewrite is caught). Off: answer any model asked for.
    check_model: bool = False
    accept_models: tuple[str, ...] = ()  # e.g. ("auto",) for a fail-open default provider

    def __post_init__(self) -> None:
        where = f"simulator {self.name!r}"
        if not self.name or not self.model:
            raise SimulatorConfigError(f"{where}: 'name' and 'model' must be non-empty")
        if not (math.isfinite(self.ttft_s) and self.ttft_s >= 0):
            raise SimulatorConfigError(
                f"{where}: 'ttft_s' must be a finite number >= 0, got {self.ttft_s}"
            )
        if not (math.isfinite(self.tokens_per_s) and self.tokens_per_s > 0):
            raise SimulatorConfigError(
                f"{where}: 'tokens_per_s' must be a finite number > 0, got {self.tokens_per_s}"
            )
        if self.concurrency < 1:
            raise SimulatorConfigError(
                f"{where}: 'concurrency' must be >= 1, got {self.concurrency}"
            )
        if self.max_queue < 0:
            raise SimulatorConfigError(f"{where}: 'max_queue' must be >= 0, got {self.max_queue}")
        if self.default_max_tokens < 1:
            raise SimulatorConfigError(f"{where}: 'default_max_tokens' must be >= 1")
        if self.style not in STYLES:
            raise SimulatorConfigError(f"{where}: 'style' must be one of {', '.join(STYLES)}")
        compile_weak_patterns(self.weak_patterns)
        if not (0.0 <= self.shaky_share <= 1.0):
            raise SimulatorConfigError(f"{where}: 'shaky_share' must be in [0, 1]")
        if not all(isinstance(name, str) and name for name in self.accept_models):
            raise SimulatorConfigError(f"{where}: 'accept_models' must be non-empty strings")


def compile_weak_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """The weak patterns compiled case-insensitively; SimulatorConfigError names a bad one."""
    compiled: list[re.Pattern[str]] = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise SimulatorConfigError(
                f"simulator weak pattern {pattern!r} is not a regex: {exc}"
            ) from exc
    return tuple(compiled)

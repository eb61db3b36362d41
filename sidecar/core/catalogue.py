"""The provider catalogue: every Envoy cluster the router may name, with its routing facts.

These are plain values; `sidecar.config.envoy` builds them from the Envoy YAML, the one
source of truth for providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.errors import ConfigError

Engine = Literal["vllm", "sglang", "tgi", "triton", "openai"]


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost_usd(self, prompt_tokens: float, output_tokens: float) -> float:
        """Expected cost of one request with these token counts."""
        return (prompt_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True)
class Provider:
    """One Envoy cluster the router may send traffic to, with the facts it routes on."""

    cluster: str
    model: str
    tier: str
    price: Price
    aliases: tuple[str, ...] = ()
    metrics_url: str | None = None
    engine: Engine = "vllm"
    ttft_s: float = 0.3
    tokens_per_s: float = 80.0
    max_concurrency: int = 64
    logprobs: bool = False  # answers token logprobs when asked (a cascade's evaluator reads them)

    def serves(self, model: str) -> bool:
        """True when a client asking for `model` may be sent here."""
        return model == self.model or model in self.aliases


@dataclass(frozen=True)
class Catalogue:
    """All providers, plus the names of every cluster Envoy defines."""

    providers: tuple[Provider, ...]
    clusters: frozenset[str]
    source: str = "<memory>"

    def provider(self, cluster: str) -> Provider:
        """The provider behind an Envoy cluster name."""
        for candidate in self.providers:
            if candidate.cluster == cluster:
                return candidate
        raise ConfigError(f"{self.source}: no provider cluster named {cluster!r}")

    def in_tier(self, tier: str) -> tuple[Provider, ...]:
        """Providers of one tier, in catalogue order."""
        return tuple(p for p in self.providers if p.tier == tier)

    def serving(self, model: str) -> tuple[Provider, ...]:
        """Providers that answer for an explicit model name."""
        return tuple(p for p in self.providers if p.serves(model))

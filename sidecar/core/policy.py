"""Which policy governs a request, resolved once from everything that may ask for one.

Precedence: a `router:<policy>` model alias, then the policies the edge collected in its
order of precedence (the client's header before the Envoy route's default), then the
routing table's default. A client naming a real model gets that model; the policy then
chooses among the clusters serving it (cheapest, fastest, or both weighed). The core knows
no header names: each ask carries its own source label, which an error about it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sidecar.errors import RequestError

AUTO_MODEL = "auto"
ALIAS_PREFIX = "router:"


class Policy(Enum):
    """How to trade cost, latency and quality for one request."""

    BALANCED = "balanced"
    SPEED = "speed"
    QUALITY = "quality"
    COST = "cost"

    @classmethod
    def parse(cls, name: str, *, source: str) -> Policy:
        """Parse a policy name, blaming `source` (a header, an alias) when it is unknown."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise RequestError(
                f"unknown routing policy {name!r} in {source}; expected one of {known}",
                code="invalid_policy",
                param=source,
            ) from None


@dataclass(frozen=True)
class PolicyAsk:
    """A policy asked for by name, and who asked (named in the error if it is unknown)."""

    name: str
    source: str


@dataclass(frozen=True)
class Intent:
    """What the client wants: a policy, and maybe one explicit model it must be served by."""

    policy: Policy
    explicit_model: str | None = None


def resolve_intent(model: str, asks: Sequence[PolicyAsk], default: Policy) -> Intent:
    """The intent of a request for `model`, given the policy asks in precedence order."""
    if model.startswith(ALIAS_PREFIX):
        return Intent(Policy.parse(model[len(ALIAS_PREFIX) :], source="model"))
    explicit = None if model == AUTO_MODEL else model
    for ask in asks:
        if ask.name.strip():
            return Intent(Policy.parse(ask.name, source=ask.source), explicit_model=explicit)
    return Intent(default, explicit_model=explicit)

"""Per-request limits: the most a client will pay for one answer, and wait for it.

Theory. A client may cap a request's expected cost (US dollars) and expected latency
(seconds until the whole answer). The decision core cannot know the real figures before
the answer exists, so it compares the *expected* ones it ranks providers by (live price x
predicted tokens; queue wait + time to first token + generation) with the caps, and drops
every candidate over a cap before the policy ranks the rest. Health is a preference and
limits are a requirement: an unhealthy provider within the limits may still serve when
nothing healthy fits, but a provider over a limit never does. When nothing fits the
request is refused with the best figures on offer, so the client can adjust, rather than
sent somewhere it said it would not pay for or wait for.

The core knows no header names: the edge parses them into a `Limits`. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Limits:
    """A client's caps on one request's expected cost and latency; None is no cap."""

    max_cost_usd: float | None = None
    max_latency_s: float | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("max_cost_usd", self.max_cost_usd),
            ("max_latency_s", self.max_latency_s),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")

    @property
    def any(self) -> bool:
        """Whether any cap is set."""
        return self.max_cost_usd is not None or self.max_latency_s is not None

    def breaches(self, cost_usd: float, latency_s: float) -> tuple[str, ...]:
        """How expected figures break the caps, e.g. "cost $0.0002 > $0.0001"; () if they fit."""
        found = []
        if self.max_cost_usd is not None and cost_usd > self.max_cost_usd:
            found.append(f"cost {usd(cost_usd)} > {usd(self.max_cost_usd)}")
        if self.max_latency_s is not None and latency_s > self.max_latency_s:
            found.append(f"latency {seconds(latency_s)} > {seconds(self.max_latency_s)}")
        return tuple(found)

    def describe(self) -> str:
        """The caps in words, e.g. "max cost $0.001 and max latency 2 s"."""
        caps = []
        if self.max_cost_usd is not None:
            caps.append(f"max cost {usd(self.max_cost_usd)}")
        if self.max_latency_s is not None:
            caps.append(f"max latency {seconds(self.max_latency_s)}")
        return " and ".join(caps) or "no limits"


NO_LIMITS = Limits()


def usd(amount: float) -> str:
    """Dollars to three significant digits without exponent: $0.0000266, $12.3."""
    return f"${Decimal(f'{amount:.3g}'):f}"


def seconds(value: float) -> str:
    """Seconds to three significant digits: 0.05 s, 1.23 s, 120 s."""
    return f"{Decimal(f'{value:.3g}'):f} s"

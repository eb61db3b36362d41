"""Exemplar files: JSONL rows of labelled prompts, validated into `Exemplar` records.

One row per line: `{"text", "route", "output_tokens"?, "weight"?}`, with `route: null`
marking a prompt the router must not claim (stored as OUT_OF_SCOPE). Every error names
the file, the line and the field, so a bad row in a large file is found at once.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.files import read_jsonl
from sidecar.core.vote import OUT_OF_SCOPE
from sidecar.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Exemplar:
    """One labelled prompt; route OUT_OF_SCOPE marks a prompt the router must not claim."""

    text: str
    route: str
    output_tokens: int | None = None
    weight: float = 1.0


def parse_exemplar(row: object, where: str) -> Exemplar:
    """Validate one decoded JSONL row; `where` ("file:line") prefixes every error."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - {"text", "route", "output_tokens", "weight"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: field 'text' must be a non-empty string")
    if "route" not in row:
        raise ConfigError(f"{where}: field 'route' is missing (use null for out-of-scope)")
    route = row["route"]
    if route is None:
        route = OUT_OF_SCOPE
    elif not isinstance(route, str) or not route.strip():
        raise ConfigError(f"{where}: field 'route' must be a non-empty string or null")
    elif route == OUT_OF_SCOPE:
        raise ConfigError(f"{where}: field 'route' uses the reserved name; write null instead")
    tokens = row.get("output_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        raise ConfigError(f"{where}: field 'output_tokens' must be an integer or null")
    if tokens is not None and tokens < 0:
        raise ConfigError(f"{where}: field 'output_tokens' must not be negative")
    weight = row.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ConfigError(f"{where}: field 'weight' must be a positive number")
    if not math.isfinite(weight):
        raise ConfigError(f"{where}: field 'weight' must be finite")
    return Exemplar(text=text, route=route, output_tokens=tokens, weight=float(weight))


def load_exemplars(path: Path) -> list[Exemplar]:
    """Read a JSONL exemplar file; errors name the file, line and field."""
    exemplars = [parse_exemplar(row, where) for where, row in read_jsonl(path)]
    if not exemplars:
        raise ConfigError(f"{path}: no exemplars")
    return exemplars


def shipped_exemplars() -> Path:
    """The default exemplar set that ships inside the package."""
    return Path(str(importlib.resources.files("sidecar") / "data" / "exemplars.jsonl"))

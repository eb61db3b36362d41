"""Semantic routing wiring (placeholder until the classifier lands)."""

from __future__ import annotations

from sidecar.errors import ConfigError
from sidecar.server import SemanticParts
from sidecar.settings import Settings


async def build_semantic(settings: Settings) -> SemanticParts | None:
    """Build the semantic classifier for the sidecar, or None when it is disabled."""
    if not settings.semantic.enabled:
        return None
    raise ConfigError("semantic routing is not wired yet; run with --no-semantic")

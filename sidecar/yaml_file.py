"""Reading operator YAML files (Envoy config, sidecar settings) as mappings.

Every error is a ConfigError that names the file and what was expected of it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sidecar.errors import ConfigError


def read_yaml_mapping(path: Path, what: str, *, empty_ok: bool = False) -> dict[str, object]:
    """Parse a YAML file whose top level must be a mapping; an empty file is {} if allowed."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None and empty_ok:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping")
    return loaded

"""`inference-router cascade forget`: empty the cascade's memory of escalated prompts.

Learning from outcomes (`cascade.learn`) is reversible: this empties the memory file the
settings name (or the one given), keeping its header. A running sidecar reads the file at
start only, so restart it (or it keeps what it had learned until then).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "empty the cascade's memory of escalated prompts"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router cascade forget`."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--memory", type=Path, help="the memory file")
    which.add_argument("--config", type=Path, help="sidecar settings naming cascade.learn.path")


def run(args: argparse.Namespace) -> int:
    """Empty the file; print how many prompts were forgotten."""
    from sidecar.cascade.memory import forget
    from sidecar.config.settings import load_settings
    from sidecar.errors import ConfigError

    path = args.memory
    if path is None:
        settings = load_settings(args.config, {})
        path = settings.cascade.learn.path
        if path is None:
            raise ConfigError(f"{args.config}: cascade.learn.path is not set")
    dropped = forget(path)
    print(f"{path}: forgot {dropped} prompts")
    return 0

"""The `inference-router` command line: one entry point, one module per subcommand.

Every subcommand module has the same shape: `HELP`, `configure(parser)` and `run(args)`.
They are wired below by plain imports; each keeps its heavy imports (ONNX Runtime,
FAISS, gRPC servers) inside `run`, so building the parser is cheap and a simulator
process never loads FAISS.

This is the only place that configures logging and turns a RouterError into an exit
status with a one-line message; everything below raises.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from sidecar import __version__
from sidecar.cli import (
    calibrate,
    cascade_forget,
    cascade_train,
    check,
    decide,
    envoy_tracing,
    evaluate,
    index_build,
    model_build,
    serve,
    simulate,
    stack,
)
from sidecar.errors import RouterError


class Command(Protocol):
    """What every subcommand module provides."""

    HELP: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit status, raise RouterError on failure."""


# (command words, module): "index build" is the subcommand "build" of the group "index".
COMMANDS: tuple[tuple[tuple[str, ...], Command], ...] = (
    (("serve",), serve),
    (("check",), check),
    (("stack",), stack),
    (("decide",), decide),
    (("simulate",), simulate),
    (("model", "build"), model_build),
    (("index", "build"), index_build),
    (("eval",), evaluate),
    (("calibrate",), calibrate),
    (("cascade", "train"), cascade_train),
    (("cascade", "forget"), cascade_forget),
    (("envoy", "tracing"), envoy_tracing),
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="inference-router", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", type=str.upper, default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    commands = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for words, module in COMMANDS:
        target = commands
        if len(words) == 2:
            group = words[0]
            if group not in groups:
                groups[group] = commands.add_parser(group, help=f"{group} commands").add_subparsers(
                    dest=f"{group}_command", required=True
                )
            target = groups[group]
        sub = target.add_parser(words[-1], help=module.HELP)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `inference-router` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # FAISS logs its CPU-feature probing (including a harmless ImportError) at INFO.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except RouterError as error:
        print(f"inference-router: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code

"""The `inference-router` command line: one entry point, one subcommand per job.

This is the only place that configures logging and turns RouterError into an exit
status with a one-line message; everything below raises.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.errors import RouterError

log = logging.getLogger(__name__)

DEFAULT_ENVOY_CONFIG = Path("envoy/local.yaml")

Runner = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from sidecar.semantic import build_semantic
    from sidecar.server import serve_forever
    from sidecar.settings import load_settings

    overrides: dict[str, object] = {
        "envoy_config": args.envoy_config,
        "listen": args.listen,
        "admin_listen": args.admin_listen,
    }
    settings = load_settings(args.config, overrides)
    if args.no_semantic or args.index:
        semantic = settings.semantic.model_copy(
            update={"enabled": not args.no_semantic, "index": args.index or settings.semantic.index}
        )
        settings = settings.model_copy(update={"semantic": semantic})
    asyncio.run(serve_forever(settings, build_semantic))
    return 0


def _check(args: argparse.Namespace) -> int:
    from sidecar.catalogue import load_catalogue
    from sidecar.settings import load_settings

    envoy_config = args.envoy_config or (None if args.config else DEFAULT_ENVOY_CONFIG)
    settings = load_settings(args.config, {"envoy_config": envoy_config})
    catalogue = load_catalogue(settings.envoy_config)
    settings.routing_table().validate(catalogue)
    for provider in catalogue.providers:
        print(f"{provider.cluster}: model={provider.model} tier={provider.tier}")
    print(f"{settings.envoy_config}: OK, {len(catalogue.providers)} provider clusters")
    return 0


def _stack(args: argparse.Namespace) -> int:
    from sidecar.stack import LocalStack, StackPorts, run_stack

    base = LocalStack(args.envoy_config)
    ports = StackPorts(
        listener=args.port,
        admin=args.admin_port,
        sidecar=args.sidecar_port,
        sidecar_admin=args.sidecar_admin_port,
        providers={
            p.cluster: args.provider_base_port + i for i, p in enumerate(base.catalogue.providers)
        },
    )
    sidecar_args = ["--no-semantic"] if args.no_semantic else []
    if args.config:
        sidecar_args += ["--config", str(args.config)]
    stack = LocalStack(args.envoy_config, ports, sidecar_args=sidecar_args)
    return run_stack(stack)


def _decide(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from inference_router.v1 import router_pb2, router_pb2_grpc

    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    headers = dict(h.split(":", 1) for h in args.header)
    request = router_pb2.DecideRequest(
        body=body, path=args.path, headers={k.strip(): v.strip() for k, v in headers.items()}
    )
    with grpc.insecure_channel(args.target) as channel:
        try:
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Decide(request, timeout=10)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(json.dumps(MessageToDict(reply), indent=2))
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the router sidecar (ext_proc + API)")
    serve.add_argument("--config", type=Path, help="sidecar settings YAML")
    serve.add_argument("--envoy-config", type=Path, help="Envoy YAML with the provider clusters")
    serve.add_argument("--listen", help="gRPC address (default 127.0.0.1:50051)")
    serve.add_argument("--admin-listen", help="metrics/health HTTP address (default :9464)")
    serve.add_argument("--index", type=Path, help="exemplar index directory")
    serve.add_argument("--no-semantic", action="store_true", help="route without the classifier")
    serve.set_defaults(run=_serve)

    check = sub.add_parser("check", help="validate settings and the Envoy provider catalogue")
    check.add_argument("--config", type=Path)
    check.add_argument("--envoy-config", type=Path, help=f"default {DEFAULT_ENVOY_CONFIG}")
    check.set_defaults(run=_check)

    stack = sub.add_parser("stack", help="run Envoy, the sidecar and simulated providers")
    stack.add_argument("--envoy-config", type=Path, default=DEFAULT_ENVOY_CONFIG)
    stack.add_argument("--config", type=Path, help="sidecar settings YAML")
    stack.add_argument("--port", type=int, default=8080, help="Envoy listener port")
    stack.add_argument("--admin-port", type=int, default=9901)
    stack.add_argument("--sidecar-port", type=int, default=50051)
    stack.add_argument("--sidecar-admin-port", type=int, default=9464)
    stack.add_argument("--provider-base-port", type=int, default=8101)
    stack.add_argument("--no-semantic", action="store_true")
    stack.set_defaults(run=_stack)

    decide = sub.add_parser("decide", help="ask a running sidecar to explain a decision")
    decide.add_argument("body", help="JSON request body, or - for stdin")
    decide.add_argument("--target", default="127.0.0.1:50051")
    decide.add_argument("--path", default="/v1/chat/completions")
    decide.add_argument("-H", "--header", action="append", default=[], help="name: value")
    decide.set_defaults(run=_decide)


# Subcommands whose modules import heavy libraries (ONNX Runtime, FAISS, aiohttp) are
# imported only when that subcommand runs, so a simulator process never loads FAISS.
# (group, name, module, configure function, run function, help)
_TOOLS: tuple[tuple[str | None, str, str, str, str, str], ...] = (
    (None, "simulate", "sidecar.simulator", "configure_parser", "run",
     "run an OpenAI-compatible provider simulator"),
    ("model", "build", "sidecar.embedder", "configure_parser", "run",
     "build the ONNX embedding model"),
    ("index", "build", "sidecar.index_command", "configure_build_parser", "run_build",
     "embed exemplars into a FAISS index"),
    (None, "eval", "sidecar.eval_command", "configure_eval_parser", "run_eval",
     "measure routing quality on labelled data"),
    (None, "calibrate", "sidecar.calibration", "configure_calibrate_parser", "run_calibrate",
     "choose classifier thresholds to hit a target"),
)  # fmt: skip


def _add_tools(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str | None
) -> None:
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for group, name, module_name, configure, run, help_text in _TOOLS:
        target = sub
        if group is not None:
            if group not in groups:
                groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(
                    dest=f"{group}_command", required=True
                )
            target = groups[group]
        parser = target.add_parser(name, help=help_text)
        if command == (group or name):
            module = importlib.import_module(module_name)
            getattr(module, configure)(parser)
            parser.set_defaults(run=getattr(module, run))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser, with the chosen subcommand's options fully configured."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--log-level")
    peek.add_argument("command", nargs="?")
    command = peek.parse_known_args(argv)[0].command
    parser = argparse.ArgumentParser(prog="inference-router", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_tools(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `inference-router` command."""
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # FAISS logs its CPU-feature probing (including a harmless ImportError) at INFO.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    run: Runner = args.run
    try:
        return run(args)
    except RouterError as error:
        print(f"inference-router: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""`inference-router decide`: ask a running sidecar to explain a decision."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "ask a running sidecar to explain a decision"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-router decide`."""
    parser.add_argument("body", help="JSON request body, or - for stdin")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("-H", "--header", action="append", default=[], help="name: value")


def run(args: argparse.Namespace) -> int:
    """Send the body to the sidecar's Decide API and print the explained decision."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from inference_router.v1 import router_pb2, router_pb2_grpc

    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    headers = dict(h.split(":", 1) for h in args.header if ":" in h)
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

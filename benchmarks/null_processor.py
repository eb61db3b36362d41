"""An ext_proc server that decides nothing: the floor of any Python ext_proc sidecar.

Theory. Much of what the router costs through Envoy is not routing but the gRPC stream
each request opens to the sidecar: Envoy's side of it and grpc.aio's. This server runs
on the same stack as the sidecar (grpc.aio on uvloop, gRPC's event_engine_listener
experiment off, the same server options) and answers every message with the smallest
valid response, so a row through it in the side-by-side benchmark shows what the
exchange alone costs: the ceiling of this design on this machine, whatever the router
does inside it.

Run: python -m benchmarks.null_processor --port N (serves until SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import os

from sidecar.cli.serve import GRPC_EXPERIMENTS

os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)  # before grpc loads

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from sidecar.cli.lifecycle import until_stop_signal

_ANSWERS = {
    "request_headers": ext.ProcessingResponse(request_headers=ext.HeadersResponse()),
    "request_body": ext.ProcessingResponse(request_body=ext.BodyResponse()),
    "response_headers": ext.ProcessingResponse(response_headers=ext.HeadersResponse()),
    "response_body": ext.ProcessingResponse(response_body=ext.BodyResponse()),
}


class NullProcessor(ext_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers each message unchanged, as the router's handler reads and writes."""

    async def Process(
        self,
        request_iterator: object,
        context: grpc.aio.ServicerContext[ext.ProcessingRequest, ext.ProcessingResponse],
    ) -> None:
        """One request's messages, each answered with CONTINUE."""
        while (message := await context.read()) is not grpc.aio.EOF:
            await context.write(_ANSWERS[message.WhichOneof("request") or "request_body"])


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until a stop signal."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ext_grpc.add_ExternalProcessorServicer_to_server(NullProcessor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await until_stop_signal()
    finally:
        await server.stop(1)


def main() -> None:
    """Parse --port and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

"""Child processes on loopback: free ports, readiness probes, dying with the parent.

The pieces of process handling the local stack and its supervisor share. Ports are
checked by binding them before anything starts, so a leftover of another run is named
instead of fooling a readiness check with its answers. Children must not outlive us: on
Linux each asks the kernel, before exec, for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so even a SIGKILLed supervisor leaves no process holding a port.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.errors import StackError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    Every probe socket stays bound until all are chosen, so the ports are distinct; a
    child may still lose its port to another process before it binds, which is why
    `LocalStack.start` reports the children's logs and callers may retry.
    """
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_until(
    ready: Callable[[], bool], what: str, deadline_s: float, process: subprocess.Popen[bytes]
) -> None:
    """Poll `ready` until it is true, the process dies, or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise StackError(f"{process.args!r} exited with {process.returncode} while starting")
        if ready():
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not become ready within {deadline_s:.0f}s")


def http_ok(url: str, timeout_s: float = 1) -> bool:
    """Whether a URL answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _reports_serving(stub: health_pb2_grpc.HealthStub, timeout_s: float, service: str = "") -> bool:
    try:
        # types-grpcio-health-checking declares HealthStub without its methods.
        reply = stub.Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def grpc_serving(target: str, timeout_s: float = 1, service: str = "") -> bool:
    """Whether gRPC health at `target` reports SERVING now, for `service` ("" = the server)."""
    with grpc.insecure_channel(target) as channel:
        return _reports_serving(health_pb2_grpc.HealthStub(channel), timeout_s, service)


def wait_http_ok(url: str, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    """Wait until a URL answers 200."""
    wait_until(partial(http_ok, url), url, deadline_s, process)


def wait_grpc_serving(target: str, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    """Wait until gRPC health at `target` reports SERVING."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        ready = partial(_reports_serving, stub, 1)
        wait_until(ready, f"the sidecar at {target}", deadline_s, process)


def terminate(
    process: subprocess.Popen[bytes], timeout_s: float = 10.0, *, group: bool = False
) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; returns once it has exited.

    `group`: signal the process group it leads (a child started with
    `start_new_session=True`, so whatever it started goes too).
    """
    if process.poll() is not None:
        return

    def send(signum: signal.Signals) -> None:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)

    send(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` after which Linux sends the child SIGTERM when we die (None elsewhere).

    The death signal follows the *thread* that forked the child: spawn from a thread that
    lives as long as the stack (the supervisor's main thread), or children die with it.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here: the forked child should only make the call, not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    signum = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # we died before the request took effect
            os._exit(1)

    return preexec


def check_ports_free(owners: Sequence[tuple[int, str]]) -> None:
    """Raise StackError naming the first port that is shared or already bound on loopback."""
    seen: dict[int, str] = {}
    for port, owner in owners:
        if port in seen:
            raise StackError(f"port {port} is given to both {seen[port]} and {owner}")
        seen[port] = owner
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers do: a closed connection's TIME_WAIT does not count as in use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise StackError(
                    f"port {port} (for {owner}) is already in use on 127.0.0.1: "
                    f"{exc.strerror or exc}; is a stack from an earlier run still up?"
                ) from exc


def describe_exit(returncode: int) -> str:
    """'status 1' or 'signal SIGKILL', as a Popen return code means it."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"

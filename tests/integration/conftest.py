"""Integration fixtures: a real local stack (Envoy binary, sidecar, simulators) on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from sidecar.config.envoy import load_catalogue
from sidecar.devstack.stack import LocalStack, StackPorts
from sidecar.errors import StackError

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = ROOT / "envoy" / "local.yaml"
# Ports are chosen free, then bound by the children a moment later; another process may
# take one in between. Each attempt chooses fresh ports.
START_ATTEMPTS = 3


def seconds_until(condition: Callable[[], bool], what: str, deadline_s: float) -> float:
    """Poll `condition` until true; returns the seconds it took, fails naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {deadline_s:.0f}s")


def start_stack(
    tmp: Path,
    *,
    fail_open: bool = True,
    sidecar_args: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> LocalStack:
    """Start a full stack on ports chosen now; the caller stops it.

    `environ` is the children's environment (this process's by default).
    """
    catalogue = load_catalogue(LOCAL_CONFIG)
    for attempt in range(1, START_ATTEMPTS + 1):
        workdir = tmp / f"attempt-{attempt}"
        stack = LocalStack(
            LOCAL_CONFIG,
            StackPorts.ephemeral(catalogue),
            fail_open=fail_open,
            sidecar_args=sidecar_args,
            workdir=workdir,
            quiet=True,
            environ=environ,
        )
        try:
            stack.start()  # stops whatever it started if any part fails
        except StackError:
            if attempt == START_ATTEMPTS:
                raise
            continue  # the failed attempt's logs stay in its workdir
        return stack
    raise AssertionError("unreachable: the last attempt returns or raises")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One shared stack for tests that do not stop any part of it."""
    running = start_stack(tmp_path_factory.mktemp("stack"), sidecar_args=("--no-semantic",))
    try:
        yield running
    finally:
        running.stop()

"""Integration fixtures: a real local stack (Envoy binary, sidecar, simulators) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.devstack.stack import LocalStack, StackPorts

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = ROOT / "envoy" / "local.yaml"


def start_stack(
    tmp: Path, *, fail_open: bool = True, sidecar_args: tuple[str, ...] = ()
) -> LocalStack:
    """Start a full stack on ports chosen now; the caller stops it."""
    probe = LocalStack(LOCAL_CONFIG, workdir=tmp)
    ports = StackPorts.ephemeral(probe.catalogue)
    stack = LocalStack(
        LOCAL_CONFIG,
        ports,
        fail_open=fail_open,
        sidecar_args=sidecar_args,
        workdir=tmp,
        quiet=True,
    )
    stack.start()
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One shared stack for tests that do not stop any part of it."""
    running = start_stack(tmp_path_factory.mktemp("stack"), sidecar_args=("--no-semantic",))
    try:
        yield running
    finally:
        running.stop()

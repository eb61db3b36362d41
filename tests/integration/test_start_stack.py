"""The integration harness itself: a stack that loses a port is started again on new ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.devstack.stack import LocalStack
from sidecar.errors import StackError
from tests.integration import conftest


def test_start_is_retried_on_fresh_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[LocalStack] = []

    def start(self: LocalStack) -> None:
        tried.append(self)
        if len(tried) < conftest.START_ATTEMPTS:
            raise StackError("sidecar: address already in use")

    monkeypatch.setattr(LocalStack, "start", start)
    stack = conftest.start_stack(tmp_path)
    assert stack is tried[-1] and len(tried) == conftest.START_ATTEMPTS
    # Each attempt chose its own ports and kept its own logs.
    assert len({id(s.ports) for s in tried}) == len(tried)
    assert len({s.config_path.parent for s in tried}) == len(tried)


def test_start_gives_up_after_the_last_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start(self: LocalStack) -> None:
        raise StackError("envoy exited with 1 while starting")

    monkeypatch.setattr(LocalStack, "start", start)
    with pytest.raises(StackError, match="envoy exited"):
        conftest.start_stack(tmp_path)

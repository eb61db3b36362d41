"""Unit tests: in-process and fast. They never build the real MiniLM model.

Anything that needs the real embedding model (or starts Envoy, the sidecar or simulator
processes) belongs in tests/integration; here the model store refuses to build it, so a
test that reaches it by accident fails at once instead of quietly taking a minute.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from sidecar.semantic import minilm_graph, model_store


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError(
        "a unit test tried to build the real MiniLM model: use tests.fakes.HashEmbedder "
        "(tests.fakes.run_command_with_fake_embedder for CLI commands) or move the test "
        "to tests/integration"
    )


@pytest.fixture(autouse=True)
def _no_real_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_store, "ensure_default_model", _refuse)
    monkeypatch.setattr(model_store, "build_minilm_onnx", _refuse)
    monkeypatch.setattr(minilm_graph, "build_minilm_onnx", _refuse)

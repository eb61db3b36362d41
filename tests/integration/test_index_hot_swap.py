"""Swapping the exemplar index of a serving sidecar, under load, through the real Envoy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from inference_router.v1 import router_pb2, router_pb2_grpc
from sidecar.devstack.stack import LocalStack
from sidecar.semantic.exemplars import shipped_exemplars
from tests.fakes import write_jsonl
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
GREETING = "hi, thanks!"
# A second exemplar set in which greetings belong to the mid tier: the swap is visible.
RELABELLED = [
    {"text": t, "route": "mid", "output_tokens": 20}
    for t in ("hi", "hi, thanks!", "hello there", "thanks a lot", "good morning", "hey")
] + [{"text": "prove the theorem rigorously", "route": "frontier", "output_tokens": 900}]


def _build(exemplars: Path, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "sidecar", "index", "build", str(exemplars), "-o", str(out),
         "--quiet"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


@dataclass(frozen=True)
class Indexes:
    shipped: Path
    relabelled_jsonl: Path
    relabelled: Path


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Indexes:
    root = tmp_path_factory.mktemp("indexes")
    relabelled_jsonl = write_jsonl(root / "relabelled.jsonl", RELABELLED)
    built = Indexes(root / "shipped", relabelled_jsonl, root / "relabelled")
    _build(shipped_exemplars(), built.shipped)
    _build(relabelled_jsonl, built.relabelled)
    return built


@pytest.fixture
def swap_stack(indexes: Indexes, tmp_path: Path) -> Iterator[tuple[LocalStack, Path]]:
    serving = tmp_path / "serving-index"
    shutil.copytree(indexes.shipped, serving)
    stack = start_stack(tmp_path / "stack", sidecar_args=("--index", str(serving)))
    try:
        yield stack, serving
    finally:
        stack.stop()


def _reload(stack: LocalStack, path: Path) -> None:
    with grpc.insecure_channel(stack.sidecar_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        stub.ReloadIndex(router_pb2.ReloadIndexRequest(path=str(path)), timeout=60)


def _route_of(stack: LocalStack, prompt: str) -> str:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    reply = httpx.post(stack.base_url + CHAT, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers["x-router-route"]


def test_reload_under_load_fails_no_request(
    swap_stack: tuple[LocalStack, Path], indexes: Indexes, tmp_path: Path
) -> None:
    stack, _ = swap_stack
    assert _route_of(stack, GREETING) == "small"
    # ReloadIndex reads only beside the served index (its directory is the reload root).
    staged = {name: tmp_path / name for name in ("relabelled", "shipped")}
    for name, path in staged.items():
        shutil.copytree(getattr(indexes, name), path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meta.json").write_text('{"format_version": 1}')
    (corrupt / "index.faiss").write_bytes(b"\0" * 64)
    prompts = [f"{GREETING} ({i})" for i in range(160)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        routes = pool.map(lambda p: _route_of(stack, p), prompts)
        for target in (staged["relabelled"], staged["shipped"], staged["relabelled"]):
            _reload(stack, target)
        with pytest.raises(grpc.RpcError) as caught:
            _reload(stack, corrupt)
        observed = set(routes)  # every request answered 200 (asserted in _route_of)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert observed <= {"small", "mid"}
    # The last good index serves; the corrupt one was refused.
    assert _route_of(stack, GREETING) == "mid"


def test_rebuilding_the_watched_index_swaps_it(
    swap_stack: tuple[LocalStack, Path], indexes: Indexes
) -> None:
    stack, serving = swap_stack
    assert _route_of(stack, GREETING) == "small"
    _build(indexes.relabelled_jsonl, serving)  # atomic replace of the watched directory
    deadline = time.monotonic() + 60
    while _route_of(stack, GREETING + " ") != "mid":
        assert time.monotonic() < deadline, "the sidecar never picked up the rebuilt index"
        time.sleep(0.5)

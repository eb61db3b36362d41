"""Request bodies: strict decoding, compact encoding, and the byte budget for big ones."""

from __future__ import annotations

import asyncio
import json

import pytest

from sidecar.errors import RequestError
from sidecar.serving.body import BodyBudget, decode_body, encode_body


def test_encode_keeps_order_and_unicode_compactly() -> None:
    payload = {"model": "x", "messages": [{"role": "user", "content": "héllo 😀"}], "n": 1.5}
    encoded = encode_body(payload)
    assert encoded == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert decode_body(encoded) == payload


@pytest.mark.parametrize(
    "raw",
    [b'{"a":"\\udc00"}', b'{"a":"\xed\xa0\x80"}', b'{"a":Infinity}', b"[1]", b"null"],
)
def test_bodies_a_provider_would_refuse_are_400s(raw: bytes) -> None:
    with pytest.raises(RequestError):
        decode_body(raw)


async def _turns(n: int = 10) -> None:
    for _ in range(n):  # let every ready task run up to its next wait
        await asyncio.sleep(0)


async def test_the_budget_admits_in_arrival_order_within_the_limit() -> None:
    budget = BodyBudget(limit=10)
    inside: list[str] = []
    leave = {name: asyncio.Event() for name in "abc"}

    async def body(name: str, size: int) -> None:
        async with budget.hold(size):
            inside.append(name)
            await leave[name].wait()
            inside.remove(name)

    tasks = [asyncio.create_task(body(n, s)) for n, s in (("a", 6), ("b", 6), ("c", 3))]
    await _turns()
    # "b" does not fit beside "a"; "c" would, but must not overtake "b".
    assert inside == ["a"]
    leave["a"].set()
    await _turns()
    assert inside == ["b", "c"]  # 6 + 3 <= 10
    leave["b"].set()
    leave["c"].set()
    await asyncio.gather(*tasks)


async def test_a_body_larger_than_the_budget_still_goes_alone() -> None:
    budget = BodyBudget(limit=10)
    async with budget.hold(50):
        pass

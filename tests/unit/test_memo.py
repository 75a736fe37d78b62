"""The single-flight, short-lived cache behind /readyz."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.memo import Memo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_callers_share_one_computation_and_reuse_it_until_it_expires() -> None:
    clock = Clock()
    memo: Memo[int] = Memo(ttl_seconds=2.0, clock=clock)
    computed = 0
    release = asyncio.Event()

    async def compute() -> int:
        nonlocal computed
        computed += 1
        await release.wait()
        return computed

    waiting = [asyncio.create_task(memo.get(compute)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    clock.now += 1.9
    assert await memo.get(compute) == 1
    clock.now += 0.2
    assert await memo.get(compute) == 2
    assert computed == 2


async def test_a_failed_computation_is_not_cached() -> None:
    memo: Memo[int] = Memo(ttl_seconds=60.0, clock=Clock())
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("NATS away")
        return 7

    with pytest.raises(RuntimeError):
        await memo.get(flaky)
    assert await memo.get(flaky) == 7

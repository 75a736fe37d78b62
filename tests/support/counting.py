"""Counting calls of a method: a scan or a query is a behaviour a test can count (never a time it can measure)."""

from __future__ import annotations

import asyncio
from typing import Any


class CountedCalls:
    """Counts calls of one store method (a scan is a behaviour: one query of the scheduled cases)."""

    def __init__(self, target: Any, name: str) -> None:
        self.calls = 0
        self._called = asyncio.Event()
        original = getattr(target, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self._called.set()
            return await original(*args, **kwargs)

        setattr(target, name, counted)

    async def at_least(self, calls: int) -> None:
        while self.calls < calls:
            self._called.clear()
            await self._called.wait()

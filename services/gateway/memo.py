"""A value recomputed at most once per period, however many requests ask for it at once (single flight).

`/readyz` uses it: it fans out to every service, NATS and MongoDB, and it is unauthenticated, so without it a
probe flood would multiply into a request flood on every backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Memo[T]:
    ttl_seconds: float
    clock: Callable[[], float] = time.monotonic
    _value: T | None = None
    _computed_at: float = float("-inf")
    _pending: asyncio.Task[T] | None = field(default=None, repr=False)

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        if self._value is not None and self.clock() - self._computed_at < self.ttl_seconds:
            return self._value
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh(compute))
        # shield: one caller giving up (a client disconnect) must not cancel the others' answer.
        return await asyncio.shield(self._pending)

    async def _refresh(self, compute: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await compute()
            self._value, self._computed_at = value, self.clock()
            return value
        finally:
            self._pending = None

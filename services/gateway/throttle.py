"""Per-API-key, per-route throttling with token buckets (`POST /cases` gets a tighter bucket than the rest).

A bucket holds `burst` tokens and refills at `rate` per second; a request takes one token or is refused
with 429 RATE_LIMITED, `Retry-After` and the `RateLimit-*` headers (IETF draft names, as Litestar uses).
Buckets live in the gateway process: with N gateway replicas a key gets up to N times the configured rate,
which the README states; a shared store would be the next step if that ever matters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# Above this many buckets, refilled ones are forgotten.
MAX_BUCKETS: Final = 100_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`"10/20"`: 10 requests per second with a burst of 20 (the settings pattern checks the shape)."""
        rate, burst = text.split("/")
        return cls(float(rate), int(burst))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until a token is available again (for Retry-After and RateLimit-Reset).
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass
class Throttle:
    limits: dict[str, RateLimit]
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def take(self, *, caller: str, route_class: str) -> Decision:
        """Spend a token if there is one."""
        return self._decide(caller, route_class, spend=True)

    def peek(self, *, caller: str, route_class: str) -> Decision:
        """Whether a token is there, without spending it (for buckets that only failures spend)."""
        return self._decide(caller, route_class, spend=False)

    def _decide(self, caller: str, route_class: str, *, spend: bool) -> Decision:
        limit = self.limits[route_class]
        now = self.clock()
        bucket = self._buckets.get((caller, route_class))
        if bucket is None:
            bucket = self._buckets[(caller, route_class)] = _Bucket(tokens=float(limit.burst), updated=now)
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.rate_per_second)
        bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed and spend:
            bucket.tokens -= 1.0
        missing = max(0.0, 1.0 - bucket.tokens)
        reset = math.ceil(missing / limit.rate_per_second) if missing else 0
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full_buckets(now)
        return Decision(allowed=allowed, limit=limit.burst, remaining=int(bucket.tokens), reset_seconds=reset)

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled: a flood of distinct callers (random keys, spoofed addresses before
        a proxy) must not grow the map without bound, and a full bucket is the same as no bucket."""
        for key, bucket in list(self._buckets.items()):
            limit = self.limits[key[1]]
            if bucket.tokens + (now - bucket.updated) * limit.rate_per_second >= limit.burst:
                del self._buckets[key]

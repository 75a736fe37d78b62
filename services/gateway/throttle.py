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
        limit = self.limits[route_class]
        now = self.clock()
        bucket = self._buckets.get((caller, route_class))
        if bucket is None:
            bucket = self._buckets[(caller, route_class)] = _Bucket(tokens=float(limit.burst), updated=now)
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.rate_per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            allowed = True
        else:
            allowed = False
        missing = max(0.0, 1.0 - bucket.tokens)
        reset = math.ceil(missing / limit.rate_per_second) if missing else 0
        return Decision(allowed=allowed, limit=limit.burst, remaining=int(bucket.tokens), reset_seconds=reset)

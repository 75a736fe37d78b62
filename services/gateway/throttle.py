"""Per-API-key, per-route throttling with token buckets (`POST /cases` gets a tighter bucket than the rest).

A bucket holds `burst` tokens and refills at `rate` per second; a request takes one token or is refused
with 429 RATE_LIMITED, `Retry-After` and the `RateLimit-*` headers (IETF draft names, as Litestar uses).
The arithmetic is one pure function (`advance`), shared by the in-process `Throttle` here (failed
authentication per source address, `THROTTLE_STORE=local`, and the fallback when NATS KV is unreachable) and by
`services.gateway.shared_throttle`, which keeps the per-key buckets in NATS KV so every gateway enforces one rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

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


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    # When `tokens` was last computed, in seconds of the throttle's clock.
    updated: float


def advance(state: BucketState | None, limit: RateLimit, *, now: float, spend: bool) -> tuple[BucketState, Decision]:
    """Refill `state` (None: a bucket never used, or forgotten, which is a full one) to `now`, spend a token if
    asked and there is one, and say what was decided. A clock behind `updated` (another gateway's skew) refills
    nothing rather than draining."""
    if state is None:
        tokens = float(limit.burst)
    else:
        tokens = min(float(limit.burst), state.tokens + max(0.0, now - state.updated) * limit.rate_per_second)
    allowed = tokens >= 1.0
    if allowed and spend:
        tokens -= 1.0
    missing = max(0.0, 1.0 - tokens)
    reset = math.ceil(missing / limit.rate_per_second) if missing else 0
    decision = Decision(allowed=allowed, limit=limit.burst, remaining=int(tokens), reset_seconds=reset)
    return BucketState(tokens=tokens, updated=now), decision


@dataclass
class Throttle:
    """Buckets in this process's memory."""

    limits: dict[str, RateLimit]
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], BucketState] = field(default_factory=dict)

    def take(self, *, caller: str, route_class: str) -> Decision:
        """Spend a token if there is one."""
        return self._decide(caller, route_class, spend=True)

    def peek(self, *, caller: str, route_class: str) -> Decision:
        """Whether a token is there, without spending it (for buckets that only failures spend)."""
        return self._decide(caller, route_class, spend=False)

    def _decide(self, caller: str, route_class: str, *, spend: bool) -> Decision:
        now, key = self.clock(), (caller, route_class)
        state, decision = advance(self._buckets.get(key), self.limits[route_class], now=now, spend=spend)
        self._buckets[key] = state
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full_buckets(now)
        return decision

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled: a flood of distinct callers (random keys, spoofed addresses before
        a proxy) must not grow the map without bound, and a full bucket is the same as no bucket."""
        for key, bucket in list(self._buckets.items()):
            limit = self.limits[key[1]]
            if bucket.tokens + (now - bucket.updated) * limit.rate_per_second >= limit.burst:
                del self._buckets[key]


class KeyThrottle(Protocol):
    """The per-API-key buckets, wherever they live (THROTTLE_STORE)."""

    async def take(self, *, caller: str, route_class: str) -> Decision: ...


class LocalKeyThrottle:
    """`THROTTLE_STORE=local`: the per-key buckets in this gateway only (N gateways allow N times the rate)."""

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle

    async def take(self, *, caller: str, route_class: str) -> Decision:
        return self._throttle.take(caller=caller, route_class=route_class)

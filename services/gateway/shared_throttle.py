"""Per-API-key token buckets shared by every gateway replica, in a NATS JetStream key-value bucket.

Key design decision: the KV's compare-and-set (`create` for a new key, `update(last=revision)` otherwise) is the
only coordination. A gateway reads a bucket, spends a token with the pure arithmetic of
`services.gateway.throttle.advance`, and writes it back only if nobody wrote in between; when it loses, it reads
again, at most `MAX_CAS_ATTEMPTS` times, then refuses (429): a key hammered through several gateways at once is
over its rate anyway. Within one process, requests of one key queue on a lock, so CAS conflicts come only from
other gateways, and the last revision written is remembered, so the common case is one round trip (the write).
A remembered state can only overstate the tokens (others spend, nobody adds), so a refusal from it is right and
an approval is checked by the CAS.

A winning write may take a small lease with its token: up to `LEASE_SHARE` of the burst more (whole tokens, only
what the bucket holds), spent by this gateway's next requests of the key without a round trip. Leased tokens
are taken from the shared bucket like any other, so the bucket's arithmetic still bounds what is admitted; what
a lease changes is when: N gateways' unspent leases (at most N x LEASE_SHARE x burst tokens) can be spent on top
of a refilled bucket, or sit unspent while another gateway is refused. So each gateway errs by at most
LEASE_SHARE of the burst either way (with 2.5 %: within +-10 % up to four gateways); a burst under 40 takes no
lease (one token per write, exactly as without leases).

When the store fails (NATS unreachable, JetStream down, a call past THROTTLE_STORE_TIMEOUT_SECONDS), the gateway
fails open to its own in-process buckets: per-gateway limits (N gateways allow N times the rate) are a better
answer than refusing every client or admitting unlimited traffic; each such decision is logged and counted in
`caseflow_gateway_throttle_store_fallbacks_total{reason="unavailable"}`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.api import StorageType
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.gateway.throttle import MAX_BUCKETS, BucketState, Decision, RateLimit, Throttle, advance
from shared.clock import now_ms
from shared.metrics import THROTTLE_STORE_FALLBACKS
from shared.subjects import THROTTLE_BUCKETS

log = logging.getLogger("caseflow.gateway.throttle")

# Compare-and-set rounds before a request is refused as contended (each lost round means another gateway spent).
MAX_CAS_ATTEMPTS: Final = 8
# After the store failed, this long of local decisions before it is asked again.
STORE_RETRY_SECONDS: Final = 1.0
# The share of a bucket's burst one write may lease to this gateway beyond the token it spends (see above).
LEASE_SHARE: Final = 0.025


class StoredBucket(msgspec.Struct, array_like=True, frozen=True):
    """A bucket as stored in the KV: tokens left and when (Unix seconds, wall clock shared by the gateways)."""

    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class _Known:
    """The last state this process read or wrote for a key; revision None means the key does not exist."""

    revision: int | None
    state: BucketState | None


@dataclass(slots=True)
class _Lease:
    """Tokens this gateway took from the shared bucket ahead of its requests, and the bucket as it saw it then:
    `view` is what the client has left (the bucket after the write plus the lease), for the RateLimit headers."""

    tokens: int
    view: float

    def spend(self, limit: RateLimit) -> Decision:
        self.tokens -= 1
        self.view -= 1.0
        missing = max(0.0, 1.0 - self.view)
        reset = math.ceil(missing / limit.rate_per_second) if missing else 0
        return Decision(allowed=True, limit=limit.burst, remaining=max(0, int(self.view)), reset_seconds=reset)


def lease_size(limit: RateLimit) -> int:
    """Tokens one write may lease beyond the one it spends."""
    return int(limit.burst * LEASE_SHARE)


def bucket_key(caller: str, route_class: str) -> str:
    """A KV key for the pair: KV keys allow only [-/_=.a-zA-Z0-9], so the caller is base64url-encoded."""
    encoded = base64.urlsafe_b64encode(caller.encode()).decode() or "="
    return f"{route_class}.{encoded}"


async def open_throttle_bucket(client: NatsClient, *, timeout_seconds: float, replicas: int) -> KeyValue:
    """Create (or bind to, when its configuration is the same) the shared bucket."""
    jetstream = client.jetstream(timeout=timeout_seconds)
    # Memory storage: losing the buckets (a NATS restart) only refills them.
    return await jetstream.create_key_value(
        bucket=THROTTLE_BUCKETS.name,
        description=THROTTLE_BUCKETS.description,
        ttl=THROTTLE_BUCKETS.ttl_seconds,
        history=1,
        storage=StorageType.MEMORY,
        replicas=replicas,
    )


def wall_clock_seconds() -> float:
    return now_ms() / 1000


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it (the map stays as small as the
    number of keys in flight)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class SharedKeyThrottle:
    """`THROTTLE_STORE=nats`: one bucket per API key and route class for all gateways."""

    def __init__(
        self,
        limits: dict[str, RateLimit],
        *,
        open_bucket: Callable[[], Awaitable[KeyValue]],
        fallback: Throttle,
        clock: Callable[[], float] = wall_clock_seconds,
    ) -> None:
        self._limits = limits
        self._open_bucket = open_bucket
        self._fallback = fallback
        self._clock = clock
        self._kv: KeyValue | None = None
        self._known: dict[str, _Known] = {}
        self._leases: dict[str, _Lease] = {}
        self._locks = _KeyedLocks()
        # After a store failure, decisions are local until then (time.monotonic).
        self._store_down_until = 0.0

    async def take(self, *, caller: str, route_class: str) -> Decision:
        """Spend a token of the shared bucket if there is one."""
        key = bucket_key(caller, route_class)
        if (leased := self._spend_lease(key, route_class)) is not None:
            return leased
        if time.monotonic() < self._store_down_until:
            return self._fall_back(caller, route_class)
        async with self._locks.hold(key):
            # Requests of the key that queued behind a write may find its lease.
            if (leased := self._spend_lease(key, route_class)) is not None:
                return leased
            try:
                return await self._take(key, self._limits[route_class])
            except (NatsError, TimeoutError, OSError) as exc:
                # Anything but a lost CAS (handled in _take) means the store itself failed: fail open to the
                # gateway's own buckets rather than refuse or admit everyone, and stop asking for a moment so
                # queued requests of the key do not each wait out the timeout.
                self._known.pop(key, None)
                self._kv = None  # reopen next time (JetStream may have been down at start-up)
                self._store_down_until = time.monotonic() + STORE_RETRY_SECONDS
                log.warning(
                    "shared throttle unavailable; deciding with this gateway's buckets",
                    extra={"route_class": route_class, "error": f"{type(exc).__name__}: {exc}"},
                )
                return self._fall_back(caller, route_class)

    def _spend_lease(self, key: str, route_class: str) -> Decision | None:
        """A token of this gateway's lease on the key, if it holds one (no await: nothing else runs meanwhile)."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease.tokens <= 1:
            del self._leases[key]
        return lease.spend(self._limits[route_class])

    def _fall_back(self, caller: str, route_class: str) -> Decision:
        THROTTLE_STORE_FALLBACKS.labels(reason="unavailable").inc()
        return self._fallback.take(caller=caller, route_class=route_class)

    async def _take(self, key: str, limit: RateLimit) -> Decision:
        kv = await self._bucket()
        for _ in range(MAX_CAS_ATTEMPTS):
            known = self._known.get(key) or await self._read(kv, key)
            state, decision = advance(known.state, limit, now=self._clock(), spend=True)
            if not decision.allowed:
                # Nothing to write: the refill is computed from `updated` next time.
                self._remember(key, known)
                return decision
            leased = min(lease_size(limit), int(state.tokens))
            state = BucketState(tokens=state.tokens - leased, updated=state.updated)
            value = msgspec.json.encode(StoredBucket(tokens=state.tokens, updated=state.updated))
            try:
                if known.revision is None:
                    revision = await kv.create(key, value)
                else:
                    revision = await kv.update(key, value, last=known.revision)
            except KeyWrongLastSequenceError:
                # Another gateway wrote first (or the key expired): read again.
                self._known.pop(key, None)
                continue
            self._remember(key, _Known(revision=revision, state=state))
            if leased:
                # The decision already counts the leased tokens as the client's (they are, at this gateway).
                self._lease(key, _Lease(tokens=leased, view=state.tokens + leased))
            return decision
        THROTTLE_STORE_FALLBACKS.labels(reason="contended").inc()
        log.warning("shared throttle contended; refusing", extra={"attempts": MAX_CAS_ATTEMPTS})
        return Decision(allowed=False, limit=limit.burst, remaining=0, reset_seconds=1)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._open_bucket()
        return self._kv

    @staticmethod
    async def _read(kv: KeyValue, key: str) -> _Known:
        try:
            entry = await kv.get(key)
        except KeyDeletedError as exc:
            return _Known(revision=exc.entry.revision if exc.entry else None, state=None)
        except KeyNotFoundError:
            return _Known(revision=None, state=None)
        if entry.value is None:
            return _Known(revision=entry.revision, state=None)
        stored = msgspec.json.decode(entry.value, type=StoredBucket)
        return _Known(revision=entry.revision, state=BucketState(tokens=stored.tokens, updated=stored.updated))

    def _lease(self, key: str, lease: _Lease) -> None:
        if len(self._leases) >= MAX_BUCKETS:
            self._leases.clear()  # at most LEASE_SHARE of each key's burst goes unspent
        self._leases[key] = lease

    def _remember(self, key: str, known: _Known) -> None:
        if len(self._known) >= MAX_BUCKETS:
            self._known.clear()  # only a shortcut: forgetting costs one read per key
        self._known[key] = known

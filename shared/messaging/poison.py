"""How many times each JetStream message failed as poison, counted across every replica of its consumer.

Key design decision: the count lives in a JetStream key-value bucket (`POISON_COUNTS`, one key per
stream/consumer/sequence, expiring after its TTL) and is incremented by compare-and-set, so N replicas sharing a
durable consumer (and a replica that restarted) park a poison message after CONSUMER_MAX_DELIVER poison failures
in all, not after up to N times that. JetStream's own `num_delivered` cannot serve: it also counts every
transient failure and every redelivery after a crash, and those must never park a message. Only failures touch
the bucket (a success costs nothing), and a key left behind by a message that later succeeded expires unread.

When the bucket cannot be reached (NATS away, a timeout, a contended key), the count falls back to this
process's memory for that failure: parking comes later then, never earlier, and the message is never lost.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Final

from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.js.api import StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.subjects import POISON_COUNTS

log = logging.getLogger("caseflow.messaging.poison")

type MessageKey = tuple[str, str, int]  # (stream, consumer, stream sequence)

# Bounded memory for the fallback: a message acked elsewhere is forgotten last.
_LOCAL_CAPACITY: Final = 10_000
# Compare-and-set rounds before one failure is counted locally instead (each lost round: another replica counted).
MAX_CAS_ATTEMPTS: Final = 8
BUCKET_TIMEOUT_SECONDS: Final = 2.0


class LocalPoisonCounts:
    """Poison failures seen by this process alone (a broker without NATS key-value access, and the fallback)."""

    def __init__(self, capacity: int = _LOCAL_CAPACITY) -> None:
        self._capacity = capacity
        self._counts: OrderedDict[MessageKey, int] = OrderedDict()

    async def add(self, key: MessageKey) -> int:
        return self.add_here(key)

    def add_here(self, key: MessageKey) -> int:
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self._capacity:
            self._counts.popitem(last=False)
        return count

    def handled(self, key: MessageKey) -> None:
        """The message succeeded: nothing of it is kept."""
        self._counts.pop(key, None)

    async def parked(self, key: MessageKey) -> None:
        self._counts.pop(key, None)


def bucket_key(key: MessageKey) -> str:
    """`<stream>.<consumer>.<sequence>`: stream and consumer names are KV-safe (`[-_A-Za-z0-9]`)."""
    stream, consumer, sequence = key
    return f"{stream}.{consumer}.{sequence}"


class SharedPoisonCounts(LocalPoisonCounts):
    """Poison failures counted in the POISON_COUNTS bucket, shared by every replica; opened on first use."""

    def __init__(self, broker: NatsBroker, *, replicas: int) -> None:
        super().__init__()
        self._broker = broker
        self._replicas = replicas
        self._bucket: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._bucket is None:
            jetstream = self._broker.connection.jetstream(timeout=BUCKET_TIMEOUT_SECONDS)
            self._bucket = await jetstream.create_key_value(
                bucket=POISON_COUNTS.name,
                description=POISON_COUNTS.description,
                ttl=POISON_COUNTS.ttl_seconds,
                history=1,
                storage=StorageType.FILE,  # a NATS restart must not reset the counts
                replicas=self._replicas,
            )
        return self._bucket

    async def add(self, key: MessageKey) -> int:
        try:
            return await self._increment(bucket_key(key))
        except (NatsError, TimeoutError) as exc:
            log.warning(
                "poison count not shared (key-value bucket unavailable); counted in this process",
                extra={"key": bucket_key(key), "error": type(exc).__name__},
            )
        return self.add_here(key)

    async def _increment(self, name: str) -> int:
        bucket = await self._open()
        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                entry = await bucket.get(name)
            except KeyNotFoundError:
                try:
                    await bucket.create(name, b"1")
                except KeyWrongLastSequenceError:
                    continue  # another replica created it first: read theirs
                return 1
            count = int(entry.value or b"0") + 1
            try:
                await bucket.update(name, str(count).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return count
        raise TimeoutError(f"{name}: {MAX_CAS_ATTEMPTS} compare-and-set rounds lost")

    async def parked(self, key: MessageKey) -> None:
        await super().parked(key)
        with contextlib.suppress(NatsError, TimeoutError):  # else it expires with the bucket's TTL
            await (await self._open()).delete(bucket_key(key))

"""JetStream: durable publishing and consuming, and the streams every service declares.

Design decision: a durable consumer is shared by every replica of a service (same durable name) and acknowledges
only after its handler returns; its max_deliver is unbounded because ServiceMiddleware parks a poison message
itself. Every consumer declared here is remembered per broker, so the runtime reports each one's lag and
deploy/nats_config.py grants it, with no list kept in step with the handlers.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import nats.js.errors
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.logs import request_id_var
from shared.messaging.broker import stream_replicas
from shared.subjects import MSG_ID_HEADER, PARKED, REQUEST_ID_HEADER, StreamSpec

# A JetStream message is redelivered ACK_WAIT_SECONDS after its consumer stopped acknowledging it (a crash).
# Handlers may legitimately take longer (an LLM call, a send waiting out Retry-After), so while one runs the
# middleware tells the server "in progress" every CONSUMER_KEEP_ALIVE_SECONDS: recovery after a crash stays
# quick and a slow handler is never redelivered under itself.
ACK_WAIT_SECONDS = 30.0


async def publish_durable(
    broker: NatsBroker,
    subject: str,
    payload: msgspec.Struct,
    *,
    stream: StreamSpec,
    msg_id: str,
    timeout: float = 5.0,
) -> None:
    """Publish to JetStream; `msg_id` makes a retried publish a no-op within the stream's duplicate window."""
    headers = {MSG_ID_HEADER: msg_id}
    request_id = request_id_var.get()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    await broker.publish(payload, subject, stream=stream.name, headers=headers, timeout=timeout)


@dataclass(frozen=True, slots=True)
class DurableConsumer:
    """A JetStream durable consumer a service reads through `durable_subscriber`."""

    stream: str
    durable: str
    subject: str


# What each broker consumes durably, so the runtime can report every consumer's lag without a list to keep in
# step with the handlers. Weak keys: a broker that is gone (tests build many) takes its entry with it.
_durable_consumers: weakref.WeakKeyDictionary[NatsBroker, list[DurableConsumer]] = weakref.WeakKeyDictionary()


def durable_consumers(broker: NatsBroker) -> tuple[DurableConsumer, ...]:
    """The durable consumers declared on `broker` with `durable_subscriber`, in declaration order."""
    return tuple(_durable_consumers.get(broker, ()))


def durable_subscriber(
    broker: NatsBroker,
    *,
    subject: str,
    stream: StreamSpec,
    durable: str,
    batch_size: int = 16,
    max_workers: int = 1,
    ack_wait_seconds: float = ACK_WAIT_SECONDS,
) -> Callable[[Callable[..., Awaitable[None]]], object]:
    """A pull consumer shared by all replicas of a service (same durable name), acking after success."""
    subscriber: Callable[[Callable[..., Awaitable[None]]], object] = broker.subscriber(
        subject,
        stream=JStream(name=stream.name, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
        ack_policy=AckPolicy.ACK,
        max_workers=max_workers,
        # Redelivery after a crash is driven by ack_wait; redelivery after a handled failure by our nack
        # delay. max_deliver is unbounded here because ServiceMiddleware parks the message itself.
        config=ConsumerConfig(
            durable_name=durable,
            ack_wait=ack_wait_seconds,
            max_deliver=-1,
            num_replicas=stream_replicas(broker),
        ),
    )
    _durable_consumers.setdefault(broker, []).append(
        DurableConsumer(stream=stream.name, durable=durable, subject=subject)
    )
    return subscriber


def _stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=spec.max_age_seconds,
        duplicate_window=spec.duplicate_window_seconds,
        num_replicas=replicas,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        # Schedules fire messages with a TTL, so both are allowed together (None leaves other streams as they are).
        allow_msg_schedules=spec.allow_msg_schedules or None,
        allow_msg_ttl=spec.allow_msg_schedules or None,
    )


async def ensure_streams(broker: NatsBroker, specs: Sequence[StreamSpec], *, replicas: int) -> None:
    """Create or update the streams idempotently (every service declares what it publishes to or reads)."""
    js = broker.connection.jetstream()
    for spec in {s.name: s for s in (*specs, PARKED)}.values():
        config = _stream_config(spec, replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Another replica created it between our info and add.
                await js.update_stream(config)
        else:
            await js.update_stream(config)

"""The broker factory every Caseflow process uses: one FastStream NatsBroker per process, configured alike.

Design decision: every broker decodes with msgspec, reconnects forever, and has ServiceMiddleware installed, so
retry/park, request-id propagation and per-subject metrics hold for every handler without a handler asking. Its
RPC handlers (shared.messaging.responder) are subscribed when it starts and left when it stops, with the same
guarantees, on plain nats-py subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext

from shared.messaging.admission import HandlerBounds
from shared.messaging.connection import nats_connect_options
from shared.messaging.middleware import ServiceMiddleware, retry_policy
from shared.messaging.poison import SharedPoisonCounts
from shared.messaging.responder import attach_responders, responders_of
from shared.settings import CommonSettings
from shared.subjects import Service

# STREAM_REPLICAS of the settings each broker was created with: its durable consumers get as many replicas as
# the streams, so a consumer's state (what is acknowledged) survives the loss of a node like the messages do.
# Weak keys: a broker that is gone (tests build many) takes its entry with it.
_consumer_replicas: weakref.WeakKeyDictionary[NatsBroker, int] = weakref.WeakKeyDictionary()


class ServiceBroker(NatsBroker):
    """FastStream's broker, which also subscribes this process's RPC handlers once connected and leaves them
    (answering what they were given, within its graceful timeout) before it closes."""

    async def start(self) -> None:
        await super().start()
        await responders_of(self).start(self.connection)

    async def stop(self, *args: Any, **kwargs: Any) -> None:
        await responders_of(self).stop()
        await super().stop(*args, **kwargs)


def create_broker(settings: CommonSettings, service: Service) -> NatsBroker:
    options = nats_connect_options(settings, str(service))
    broker = ServiceBroker(
        options["servers"],
        security=SASLPlaintext(options["user"], options["password"]) if "user" in options else None,
        name=f"caseflow-{service}",
        serializer=MsgSpecSerializer(),
        graceful_timeout=settings.shutdown_grace_seconds,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        logger=logging.getLogger("caseflow.broker"),
        log_level=logging.DEBUG,
    )
    poison = SharedPoisonCounts(broker, replicas=settings.stream_replicas)
    broker.add_middleware(ServiceMiddleware(broker=broker, policy=retry_policy(settings), poison=poison))
    attach_responders(broker, HandlerBounds.from_settings(settings), grace_seconds=settings.shutdown_grace_seconds)
    _consumer_replicas[broker] = settings.stream_replicas
    return broker


def stream_replicas(broker: NatsBroker) -> int:
    """STREAM_REPLICAS of the settings `broker` was created with (1 for a broker made elsewhere)."""
    return _consumer_replicas.get(broker, 1)


async def stop_answering_requests(broker: NatsBroker, *, timeout: float) -> None:
    """Before the broker stops (SIGTERM): leave every request/reply queue group, then answer what NATS already
    delivered to this process, so the other replicas take new requests meanwhile. Waits at most `timeout`.

    Every request/reply handler is a responder (shared.messaging.responder), health checks included, so this is
    theirs to do; FastStream's own stop would mark a subscriber stopped first and unsubscribe only once its
    in-flight handler returned, dropping the requests NATS routed to it in between."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await responders_of(broker).drain()

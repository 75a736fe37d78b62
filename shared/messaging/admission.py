"""Admission control inside a service: a bound on the requests each RPC handler of this process has in flight.

In flight means admitted: running (at most the handler's `concurrency`, declared with it) or waiting for a
turn. When a handler has RPC_MAX_IN_FLIGHT in flight, the next request is answered at once with 503
SERVICE_UNAVAILABLE and `retry_after_seconds` (RPC_SHED_RETRY_AFTER_SECONDS, which the gateway sends as its HTTP
Retry-After), instead of queueing until its asker's RPC timeout. A request whose deadline passed while it waited
for its turn is dropped when its turn comes, before it runs.

Design decision a reader must know: a plain FastStream core subscriber takes one message at a time, and the
queue behind it sits inside nats-py where no middleware sees it. So every RPC subscriber is declared through
`rpc_subscriber`, with FastStream's `max_workers` set to the bound plus SHED_HEADROOM: every request reaches
`HandlerAdmission` at once, which keeps the queue itself (a semaphore of `concurrency` per handler), counts what
each handler (by subject) has in flight and refuses the excess without running it. Only a burst beyond bound +
headroom still waits in nats-py, and only as long as sheds take (microseconds each).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from faststream.middlewares import BaseMiddleware
from faststream.nats import NatsBroker

from shared import metrics
from shared.clock import now_ms
from shared.contracts.rpc import Err
from shared.errors import ErrorCode
from shared.settings import CommonSettings
from shared.subjects import DEADLINE_HEADER

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from nats.aio.msg import Msg

log = logging.getLogger("caseflow.admission")

# Concurrent deliveries beyond the bound that FastStream hands to the middleware to be shed.
SHED_HEADROOM: Final = 64
SHED_MESSAGE: Final = "The service is at capacity; retry after the time in Retry-After."


@dataclass(slots=True)
class HandlerBounds:
    """One broker's bound per RPC handler, the subjects declared bounded, and what each has in flight (one event
    loop: no lock). The broker's admission middleware: a configured object, as ServiceMiddleware is, that
    FastStream calls for each message to get that message's `HandlerAdmission` scope."""

    max_in_flight: int
    retry_after_seconds: int
    # The turns of each bounded handler: how many of its admitted requests run at once.
    turns: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> HandlerAdmission:
        return HandlerAdmission(msg, context=context, bounds=self)

    def shed_reply(self, subject: str) -> Err:
        metrics.RPC_SHED_REQUESTS.labels(subject=metrics.bounded_subject(subject)).inc()
        log.info("request shed: its handler is at its in-flight bound", extra={"subject": subject})
        return Err(
            code=ErrorCode.SERVICE_UNAVAILABLE,
            message=SHED_MESSAGE,
            kind="transient",
            retry_after_seconds=self.retry_after_seconds,
        )


_bounds: weakref.WeakKeyDictionary[NatsBroker, HandlerBounds] = weakref.WeakKeyDictionary()


class HandlerAdmission(BaseMiddleware):
    """Admits a request to a bounded handler while it has room, else answers it with the shed reply.

    Built per message by the broker's `HandlerBounds`; inside ServiceMiddleware, so a request whose deadline
    passed is dropped before it is counted here."""

    def __init__(self, msg: Any, /, *, context: ContextRepo, bounds: HandlerBounds) -> None:
        super().__init__(msg, context=context)
        self.bounds = bounds

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        raw = cast("Msg", msg.raw_message)
        subject = raw.subject
        # Only requests (a reply subject, not a JetStream ack subject) to a handler declared bounded.
        turns = self.bounds.turns.get(subject)
        if turns is None or not raw.reply or raw.reply.startswith("$JS.ACK."):
            return await call_next(msg)
        if self.bounds.in_flight[subject] >= self.bounds.max_in_flight:
            return self.bounds.shed_reply(subject)
        self.bounds.in_flight[subject] += 1
        try:
            async with turns:
                deadline = msg.headers.get(DEADLINE_HEADER, "")
                if deadline.isdigit() and now_ms() >= int(deadline):
                    metrics.DEADLINE_DROPS.labels(subject=metrics.bounded_subject(subject)).inc()
                    log.info("request dropped: its deadline passed while it waited", extra={"subject": subject})
                    return Err(
                        code=ErrorCode.SERVICE_UNAVAILABLE, message="The request's deadline passed.", kind="transient"
                    )
                return await call_next(msg)
        finally:
            self.bounds.in_flight[subject] -= 1


def bound_handlers(broker: NatsBroker, settings: CommonSettings) -> None:
    """Give `broker` its per-handler bound from the settings (`create_broker` calls this once per broker)."""
    bounds = HandlerBounds(settings.rpc_max_in_flight, settings.rpc_shed_retry_after_seconds)
    _bounds[broker] = bounds
    broker.add_middleware(bounds)


def handler_in_flight(broker: NatsBroker, subject: str) -> int:
    """How many requests the handler of `subject` on `broker` has admitted (running or waiting) right now."""
    bounds = _bounds.get(broker)
    return bounds.in_flight[subject] if bounds is not None else 0


def rpc_subscriber(
    broker: NatsBroker, subject: str, *, queue: str, concurrency: int = 1
) -> Callable[[Callable[..., Awaitable[Any]]], object]:
    """A request/reply subscriber (core NATS, queue group) running `concurrency` requests at once, with at most
    RPC_MAX_IN_FLIGHT admitted (running or waiting); more are shed at once."""
    bounds = _bounds.get(broker)
    if bounds is None:
        raise RuntimeError("rpc_subscriber needs a broker made by shared.messaging.create_broker")
    bounds.turns[subject] = asyncio.Semaphore(max(1, min(concurrency, bounds.max_in_flight)))
    subscriber: Callable[[Callable[..., Awaitable[Any]]], object] = broker.subscriber(
        subject, queue=queue, max_workers=bounds.max_in_flight + SHED_HEADROOM
    )
    return subscriber

"""The RPC handlers of a process: request/reply on plain nats-py subscriptions, one queue group per subject.

Design decision a reader must know: a request does not go through FastStream's subscriber. Its per-message path
(the subscriber, its middleware chain, dependency injection, an anyio memory stream to the workers, a publisher
object for the reply) cost the case service more CPU per `GET /cases/{id}` than the handler's own MongoDB read
(issue 16's profile). Here a request costs nats-py's delivery callback, which decides admission at once, and, when
admitted, one task that decodes the payload with msgspec, runs the handler, replies and records the metrics.
JetStream consumers stay on FastStream: their ack, retry and park logic is ServiceMiddleware's.

What every request gets, in this order (each a guarantee a test holds):
1. A request whose asker's deadline (DEADLINE_HEADER) has already passed is answered SERVICE_UNAVAILABLE without
   running: the asker gave up, and the work could commit something nobody was told about.
2. Admission (shared.messaging.admission): at RPC_MAX_IN_FLIGHT admitted requests for its handler, the next is
   answered 503 with `retry_after_seconds` at once; an admitted one waits for one of the handler's `concurrency`
   turns, and is dropped like (1) if its deadline passed while it waited.
3. The request id (`X-Request-Id`) and the subject are bound to the logging context of the request's task.
4. A failure becomes the error reply its kind calls for (`middleware.error_reply`): never a stack trace, never
   silence; the asker learns whether to retry.
5. `caseflow_nats_messages_total` / `_duration_seconds` count it by subject and outcome, as for every message.

The subscriptions are made when the broker starts (`ServiceBroker.start`), and left first when the process stops
(`drain`), so the other replicas take new requests while this one answers what it was already given.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import metrics
from shared.clock import now_ms
from shared.contracts.rpc import Err, Ok
from shared.errors import ErrorCode
from shared.logs import handled_subject_var, request_id_var
from shared.messaging.admission import HandlerBounds
from shared.messaging.middleware import error_reply
from shared.messaging.rpc import request_deadline_ms
from shared.subjects import REQUEST_ID_HEADER

log = logging.getLogger("caseflow.messaging")

NO_HEADERS: Final[Mapping[str, str]] = {}

type Reply = Ok[Any] | Err


def deadline_passed_reply(subject: str, headers: Mapping[str, str]) -> Err | None:
    """The answer to a request (core NATS request/reply) whose asker's deadline has already passed, or None:
    it has given up, so running it would be wasted work, or worse, commit something nobody was told about."""
    deadline = request_deadline_ms(headers)
    if deadline is not None and now_ms() >= deadline:
        metrics.DEADLINE_DROPS.labels(subject=metrics.bounded_subject(subject)).inc()
        log.info("request dropped: its deadline had passed", extra={"subject": subject})
        return Err(code=ErrorCode.SERVICE_UNAVAILABLE, message="The request's deadline passed.", kind="transient")
    return None


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """What a handler may know of its request beyond the payload (declare a second parameter to get it)."""

    subject: str
    headers: Mapping[str, str]


@dataclass(slots=True)
class _Handler:
    subject: str
    queue: str
    decoder: msgspec.json.Decoder[Any]
    call: Callable[[Any, RpcRequest], Awaitable[Reply]]
    turns: asyncio.Semaphore
    responders: Responders
    subscription: Subscription | None = None

    async def deliver(self, message: Msg) -> None:
        """nats-py's callback, awaited for one message at a time: decide admission now, run the request in a task
        of its own, so requests of this handler run side by side and a full handler sheds without queueing."""
        if not message.reply:
            log.warning("a request without a reply subject; ignored", extra={"subject": message.subject})
            return
        headers = message.headers or NO_HEADERS
        # Bound for the admission decision's own logs too; the request's task copies them with the context.
        request_token = request_id_var.set(headers.get(REQUEST_ID_HEADER))
        subject_token = handled_subject_var.set(message.subject)
        try:
            await self.admit(message, headers)
        finally:
            request_id_var.reset(request_token)
            handled_subject_var.reset(subject_token)

    async def admit(self, message: Msg, headers: Mapping[str, str]) -> None:
        bounds = self.responders.bounds
        late = deadline_passed_reply(self.subject, headers)
        if late is not None:
            await self.responders.refuse(message, late, outcome=metrics.OUTCOME_SHED)
            return
        if bounds.in_flight[self.subject] >= bounds.max_in_flight:
            shed = bounds.shed_reply(self.subject)
            await self.responders.refuse(message, shed, outcome=shed.code)
            return
        bounds.in_flight[self.subject] += 1
        self.responders.spawn(self.serve(message, headers))

    async def serve(self, message: Msg, headers: Mapping[str, str]) -> None:
        started = time.perf_counter()
        try:
            async with self.turns:
                # Its turn may have come after its asker gave up.
                reply = deadline_passed_reply(self.subject, headers) or await self.run(message, headers)
        finally:
            self.responders.bounds.in_flight[self.subject] -= 1
        await self.responders.reply(message, reply)
        outcome = metrics.OUTCOME_OK if isinstance(reply, Ok) else reply.code
        metrics.observe_message(self.subject, outcome, time.perf_counter() - started)

    async def run(self, message: Msg, headers: Mapping[str, str]) -> Reply:
        try:
            return await self.call(self.decoder.decode(message.data), RpcRequest(message.subject, headers))
        except Exception as exc:
            return error_reply(exc, message.subject)


@dataclass(slots=True)
class Responders:
    """One broker's RPC handlers, their subscriptions, and the tasks of the requests they are answering."""

    bounds: HandlerBounds
    # How long a stopping broker waits for the requests it was given (SHUTDOWN_GRACE_SECONDS).
    grace_seconds: float
    handlers: list[_Handler] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, subject: str, *, queue: str, concurrency: int, function: Callable[..., Awaitable[Reply]]) -> None:
        if any(handler.subject == subject for handler in self.handlers):
            raise RuntimeError(f"{subject}: already has an RPC handler in this process")
        self.handlers.append(
            _Handler(
                subject=subject,
                queue=queue,
                decoder=msgspec.json.Decoder(_payload_type(function)),
                call=_with_request(function),
                turns=asyncio.Semaphore(max(1, min(concurrency, self.bounds.max_in_flight))),
                responders=self,
            )
        )

    async def start(self, client: NatsClient) -> None:
        """Subscribe every handler not yet subscribed (nats-py subscribes them again after a reconnect)."""
        for handler in self.handlers:
            if handler.subscription is None:
                handler.subscription = await client.subscribe(handler.subject, queue=handler.queue, cb=handler.deliver)

    async def drain(self) -> None:
        """Leave every queue group, then answer what NATS already delivered (the caller bounds the wait)."""
        subscriptions = [handler.subscription for handler in self.handlers if handler.subscription is not None]
        for handler in self.handlers:
            handler.subscription = None
        for subscription in subscriptions:
            with contextlib.suppress(nats.errors.Error):
                # No new requests; those already delivered go through `deliver` (nats-py leaves it untyped).
                await subscription.drain()  # type: ignore[no-untyped-call]
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def stop(self) -> None:
        """Drain for at most the shutdown grace, then cancel what still runs (the connection is about to close)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.grace_seconds):
                await self.drain()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    def spawn(self, request: Awaitable[None]) -> None:
        task = asyncio.ensure_future(request)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def refuse(self, message: Msg, reply: Err, *, outcome: str) -> None:
        await self.reply(message, reply)
        metrics.observe_message(message.subject, outcome, 0.0)

    async def reply(self, message: Msg, reply: Reply) -> None:
        try:
            data = msgspec.json.encode(reply)
        except (TypeError, msgspec.EncodeError):
            # A handler returned what its reply type cannot carry: a bug, answered as one, never left to time out.
            log.exception("unencodable reply", extra={"subject": message.subject})
            data = msgspec.json.encode(error_reply(RuntimeError("unencodable reply"), message.subject))
        try:
            await message.respond(data)
        except (nats.errors.Error, OSError) as exc:
            # The asker times out and answers 503; there is nothing else to tell it.
            log.warning("could not send a reply", extra={"subject": message.subject, "error": type(exc).__name__})


def _payload_type(function: Callable[..., Awaitable[Reply]]) -> Any:
    parameters = list(inspect.signature(function).parameters)
    if not 1 <= len(parameters) <= 2:
        raise TypeError(f"{function.__qualname__}: an RPC handler takes its payload, and optionally an RpcRequest")
    return typing.get_type_hints(function)[parameters[0]]


def _with_request(function: Callable[..., Awaitable[Reply]]) -> Callable[[Any, RpcRequest], Awaitable[Reply]]:
    if len(inspect.signature(function).parameters) == 2:
        return function

    def payload_only(payload: Any, _: RpcRequest) -> Awaitable[Reply]:
        return function(payload)

    return payload_only


_responders: weakref.WeakKeyDictionary[NatsBroker, Responders] = weakref.WeakKeyDictionary()


def attach_responders(broker: NatsBroker, bounds: HandlerBounds, *, grace_seconds: float) -> None:
    """Give `broker` its RPC handler registry (`create_broker` calls this once per broker)."""
    _responders[broker] = Responders(bounds, grace_seconds)


def responders_of(broker: NatsBroker) -> Responders:
    responders = _responders.get(broker)
    if responders is None:
        raise RuntimeError("RPC handlers need a broker made by shared.messaging.create_broker")
    return responders


def rpc_subscriber(
    broker: NatsBroker, subject: str, *, queue: str, concurrency: int = 1
) -> Callable[[Callable[..., Awaitable[Reply]]], Callable[..., Awaitable[Reply]]]:
    """Declare the request/reply handler of `subject` (core NATS, queue group `queue`), running `concurrency`
    requests at once with at most RPC_MAX_IN_FLIGHT admitted (running or waiting); more are shed at once.

    The handler takes its payload (decoded with msgspec to the type its first parameter is annotated with) and,
    if it declares a second parameter, the RpcRequest; it returns Ok(data) or raises (ServiceError: that error).
    Its annotations are resolved when it is declared, so the names in them must be importable from its module."""

    def declare(function: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
        responders_of(broker).add(subject, queue=queue, concurrency=concurrency, function=function)
        return function

    return declare


def handler_in_flight(broker: NatsBroker, subject: str) -> int:
    """How many requests the handler of `subject` on `broker` has admitted (running or waiting) right now."""
    responders = _responders.get(broker)
    return responders.bounds.in_flight[subject] if responders is not None else 0


def rpc_handlers(broker: NatsBroker) -> list[tuple[str, str]]:
    """(subject, queue group) of every RPC handler declared on `broker`."""
    return [(handler.subject, handler.queue) for handler in responders_of(broker).handlers]

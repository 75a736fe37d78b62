"""NATS plumbing every service shares: the broker factory, typed request/reply, durable publish and consume.

Design decisions a reader must know:
- Request/reply always has an explicit timeout; a timeout, a missing responder or a lost connection becomes
  `ServiceError(SERVICE_UNAVAILABLE)`, which the gateway answers with 503 and `Retry-After`. The request's
  absolute deadline travels in a header (`request_deadline_ms` reads it), so a service can drop late work.
- A JetStream message is acknowledged only after its handler returns. A handler that raises is redelivered
  with a capped, growing delay (`RetryPolicy`), never dropped (FastStream's NATS default, REJECT_ON_ERROR, would
  drop it). Transient is not poison (shared.failures): a failure classified transient or misconfigured
  (`failure_kind`: a typed failure, SERVICE_UNAVAILABLE, MongoDB or NATS away) is redelivered for as long as it
  lasts and never parked. Any other failure is poison and counted per message; at `max_deliver` poison failures,
  or at once on `PermanentFailure`, the message is copied to the PARKED stream and terminated, so an operator can
  inspect, replay or drop it (`python -m services.auth.admin parked ...`).
- The request id travels in the `X-Request-Id` header and is bound to the logging context for every message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
import nats.errors
import nats.js.errors
from fast_depends.msgspec import MsgSpecSerializer
from faststream import AckPolicy
from faststream.exceptions import HandlerException, IncorrectState, NackMessage, RejectMessage
from faststream.middlewares import BaseMiddleware
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.security import SASLPlaintext
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import metrics
from shared.admission import bound_handlers
from shared.clock import now_ms
from shared.contracts.rpc import Err, Ok
from shared.errors import ERROR_SPECS, ErrorCode, ServiceError
from shared.failures import DependencyFailure, FailureKind
from shared.logs import handled_subject_var, request_id_var
from shared.mongo import database_unavailable
from shared.settings import CommonSettings, dev_nats_password
from shared.subjects import (
    DEADLINE_HEADER,
    MSG_ID_HEADER,
    PARKED,
    PARKED_CONSUMER_HEADER,
    PARKED_DELIVERIES_HEADER,
    PARKED_MSG_ID_HEADER,
    PARKED_REASON_HEADER,
    PARKED_SEQUENCE_HEADER,
    PARKED_STREAM_HEADER,
    PARKED_SUBJECT_HEADER,
    REQUEST_ID_HEADER,
    Service,
    StreamSpec,
    parked_subject,
)

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from nats.aio.msg import Msg

log = logging.getLogger("caseflow.messaging")

# Replies to this process's requests arrive on `_INBOX.<token>.<n>` (nats-py's default; create_broker keeps it).
REPLY_INBOX_PREFIX: Final = DEFAULT_INBOX_PREFIX.decode() + "."


def broker_unavailable(exc: BaseException) -> bool:
    """NATS or a JetStream stream cannot take a message right now: the connection is down, or a stream is
    electing a new leader after a node died (no responder, no stream response, a timeout). The caller may
    retry, so the reply is SERVICE_UNAVAILABLE (503), not INTERNAL_ERROR (found by the cluster fault tests)."""
    return isinstance(
        exc,
        nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError
        | nats.errors.NoRespondersError
        | nats.errors.TimeoutError
        | nats.errors.ConnectionClosedError
        | nats.errors.OutboundBufferLimitError,
    )


class PermanentFailure(Exception):
    """Raised by a durable handler for a message that can never succeed: it is parked at once, not retried."""


def failure_kind(exc: BaseException) -> FailureKind | None:
    """How a handler's failure is classified, once, for both replies and redeliveries: the kind a typed failure
    carries (shared.failures, `ServiceError.kind`), MongoDB or NATS being away (transient), or None: poison or a
    bug."""
    if isinstance(exc, DependencyFailure | ServiceError):
        return exc.kind
    if database_unavailable(exc) or isinstance(exc, nats.errors.Error | ConnectionError | TimeoutError):
        return "transient"
    return None


def retried_while_it_lasts(exc: BaseException) -> bool:
    """A dependency is away or refuses our configuration: waiting will fix it, so it never counts toward parking."""
    return failure_kind(exc) in ("transient", "misconfigured")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_seconds: tuple[float, ...]
    max_deliver: int
    keep_alive_seconds: float = 10.0
    cap_seconds: float = 300.0

    def delay_after(self, failed_delivery: int) -> float:
        """Delay before redelivering a message whose `failed_delivery`-th delivery (1-based) failed: the listed
        steps, then the last one doubling, never more than the cap."""
        steps = self.backoff_seconds
        delivery = max(failed_delivery, 1)
        # The exponent is bounded so a message failing for weeks does not overflow a float.
        beyond = min(max(delivery - len(steps), 0), 64)
        return min(steps[min(delivery, len(steps)) - 1] * 2.0**beyond, self.cap_seconds)


# Poison failures are counted per message by the consuming process (JetStream's num_delivered also counts every
# transient failure and every redelivery after a crash). Bounded: a message acked elsewhere is forgotten last.
_POISON_COUNT_CAPACITY: Final = 10_000


class PoisonCounts:
    """How many times each message failed as poison in this process, keyed by (stream, consumer, sequence)."""

    def __init__(self, capacity: int = _POISON_COUNT_CAPACITY) -> None:
        self._capacity = capacity
        self._counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()

    def add(self, key: tuple[str, str, int]) -> int:
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self._capacity:
            self._counts.popitem(last=False)
        return count

    def forget(self, key: tuple[str, str, int]) -> None:
        self._counts.pop(key, None)


def _is_jetstream(raw: Msg) -> bool:
    return bool(raw.reply) and raw.reply.startswith("$JS.ACK.")


def _message_key(raw: Msg) -> tuple[str, str, int]:
    meta = raw.metadata
    return meta.stream, meta.consumer, meta.sequence.stream


# A JetStream message is redelivered ACK_WAIT_SECONDS after its consumer stopped acknowledging it (a crash).
# Handlers may legitimately take longer (an LLM call, a send waiting out Retry-After), so while one runs the
# middleware tells the server "in progress" every CONSUMER_KEEP_ALIVE_SECONDS: recovery after a crash stays
# quick and a slow handler is never redelivered under itself.
ACK_WAIT_SECONDS = 30.0


async def _keep_alive(raw: Msg, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await raw.in_progress()
        except nats.errors.Error:
            return


def _outcome_of(decision: HandlerException) -> str:
    """The metrics outcome of an ack decision a handler raised itself (our handlers normally return or fail)."""
    if isinstance(decision, NackMessage):
        return metrics.OUTCOME_RETRIED
    if isinstance(decision, RejectMessage):
        return metrics.OUTCOME_REJECTED
    return metrics.OUTCOME_OK


def _error_reply(exc: Exception, subject: str) -> Err:
    """The reply to a request whose handler failed, with the failure's kind so the asker knows whether to retry."""
    if isinstance(exc, ServiceError):
        return Err.of(exc)
    kind = failure_kind(exc)
    if kind in ("transient", "misconfigured"):
        log.warning(
            "dependency unavailable while handling a request",
            extra={"subject": subject, "error": type(exc).__name__, "kind": kind},
        )
        return Err(
            code=ErrorCode.SERVICE_UNAVAILABLE,
            message=ERROR_SPECS[ErrorCode.SERVICE_UNAVAILABLE].default_message,
            kind=kind,
        )
    if isinstance(exc, DependencyFailure) and kind == "terminal":
        # The reason is the dependency's answer to our request (it becomes a case's failureReason), not internals.
        log.error("a dependency refused the request", extra={"subject": subject, "error": str(exc)[:500]})
        return Err(
            code=ErrorCode.INTERNAL_ERROR,
            message=f"{exc.dependency} refused the request: {exc.reason}"[:500],
            kind=kind,
        )
    log.exception("handler failed", extra={"subject": subject})
    return Err(code=ErrorCode.INTERNAL_ERROR, message=ERROR_SPECS[ErrorCode.INTERNAL_ERROR].default_message)


@dataclass(frozen=True, slots=True)
class FailureHandling:
    """What ServiceMiddleware needs from its broker, bound once per broker (`create_broker`): where to park, the
    retry policy, and this process's poison counts (shared by every message the broker handles)."""

    broker: NatsBroker
    policy: RetryPolicy
    poison: PoisonCounts


def _shed_reply(raw: Msg, headers: Mapping[str, str]) -> Err | None:
    """Admission for a request (core NATS request/reply): an error answered without running the handler when
    the asker's deadline has already passed while the request queued (it has given up: the work would be wasted,
    or worse, commit something nobody was told about)."""
    deadline = request_deadline_ms(headers)
    if deadline is not None and now_ms() >= deadline:
        metrics.DEADLINE_DROPS.labels(subject=metrics.bounded_subject(raw.subject)).inc()
        log.info("request dropped: its deadline had passed", extra={"subject": raw.subject})
        return Err(code=ErrorCode.SERVICE_UNAVAILABLE, message="The request's deadline passed.", kind="transient")
    return None


class ServiceMiddleware(BaseMiddleware):
    """Binds the request id, turns failures into error replies (RPC) or delayed redeliveries (JetStream), and
    counts every handled message by subject and outcome (`caseflow_nats_messages_total`).

    Built per message by FastStream through `functools.partial(ServiceMiddleware, handling=...)`."""

    def __init__(self, msg: Any, /, *, context: ContextRepo, handling: FailureHandling) -> None:
        super().__init__(msg, context=context)
        self.handling = handling

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        token = request_id_var.set(msg.headers.get(REQUEST_ID_HEADER))
        raw_message = cast("Msg", msg.raw_message)
        jetstream = _is_jetstream(raw_message)
        subject_token = handled_subject_var.set(raw_message.subject)
        keep_alive = (
            asyncio.create_task(_keep_alive(raw_message, self.handling.policy.keep_alive_seconds))
            if jetstream
            else None
        )
        started = time.perf_counter()
        # Every way out below sets the outcome the metrics record: ok, an error code, retried or parked.
        outcome: str = metrics.OUTCOME_OK
        try:
            if not jetstream and raw_message.reply:
                shed = _shed_reply(raw_message, msg.headers)
                if shed is not None:
                    outcome = metrics.OUTCOME_SHED
                    return shed
            result = await call_next(msg)
            if jetstream:
                self.handling.poison.forget(_message_key(raw_message))
            if isinstance(result, Err):
                outcome = result.code
            return result
        except HandlerException as exc:
            outcome = _outcome_of(exc)
            raise
        except Exception as exc:
            if jetstream:
                try:
                    await self._retry_or_park(raw_message, exc)
                except RejectMessage:
                    outcome = metrics.OUTCOME_PARKED
                    raise
                except NackMessage:
                    outcome = metrics.OUTCOME_RETRIED
                    raise
            reply = _error_reply(exc, raw_message.subject)
            outcome = reply.code
            return reply if raw_message.reply else None
        finally:
            # FastStream runs the broker's middlewares on the reply to our own request() too: that is not a
            # handled message, and its subject is a per-request inbox, so counting it would add a series per
            # request (found by `make bench`: ~17 samples and their CPU for every gateway request).
            if not raw_message.subject.startswith(REPLY_INBOX_PREFIX):
                metrics.observe_message(raw_message.subject, outcome, time.perf_counter() - started)
            if keep_alive is not None:
                keep_alive.cancel()
            request_id_var.reset(token)
            handled_subject_var.reset(subject_token)

    async def _retry_or_park(self, raw: Msg, exc: Exception) -> None:
        """Nack with the policy's delay, or park. A transient or misconfigured failure is never parked however
        long it lasts; every other failure adds one to the message's poison count, and the count reaching
        CONSUMER_MAX_DELIVER (or a PermanentFailure) parks it."""
        policy = self.handling.policy
        meta = raw.metadata
        delivered = meta.num_delivered
        delay = policy.delay_after(delivered)
        if retried_while_it_lasts(exc):
            log.warning(
                "dependency unavailable; message will be redelivered",
                extra={
                    "subject": raw.subject,
                    "deliveries": delivered,
                    "retry_in_seconds": delay,
                    "kind": failure_kind(exc),
                    "error": str(exc)[:500],
                },
            )
            raise NackMessage(delay=delay) from exc
        key = _message_key(raw)
        poisoned = self.handling.poison.add(key)
        if isinstance(exc, PermanentFailure) or poisoned >= policy.max_deliver:
            await self._park(raw, exc, poison_failures=poisoned)
            self.handling.poison.forget(key)
            raise RejectMessage() from exc
        log.warning(
            "handler failed; message will be redelivered",
            exc_info=exc,
            extra={
                "subject": raw.subject,
                "deliveries": delivered,
                "poison_failures": poisoned,
                "retry_in_seconds": delay,
            },
        )
        raise NackMessage(delay=delay) from exc

    async def _park(self, raw: Msg, exc: Exception, *, poison_failures: int) -> None:
        meta = raw.metadata
        original = raw.headers or {}
        log.error(
            "parking message after failed delivery",
            exc_info=exc,
            extra={
                "subject": raw.subject,
                "deliveries": meta.num_delivered,
                "poison_failures": poison_failures,
                "stream": meta.stream,
            },
        )
        headers = {
            # Nats-* headers (expected stream, msg id) belong to the original publish; its msg id is kept aside.
            **{k: v for k, v in original.items() if not k.startswith("Nats-")},
            MSG_ID_HEADER: f"{meta.stream}.{meta.sequence.stream}",
            PARKED_SUBJECT_HEADER: raw.subject,
            PARKED_STREAM_HEADER: meta.stream,
            PARKED_CONSUMER_HEADER: meta.consumer,
            PARKED_SEQUENCE_HEADER: str(meta.sequence.stream),
            PARKED_REASON_HEADER: f"{type(exc).__name__}: {exc}"[:500],
            PARKED_DELIVERIES_HEADER: str(meta.num_delivered),
        }
        if MSG_ID_HEADER in original:
            headers[PARKED_MSG_ID_HEADER] = original[MSG_ID_HEADER]
        try:
            await self.handling.broker.connection.jetstream().publish(
                parked_subject(meta.stream, meta.consumer), raw.data, headers=headers
            )
        except Exception:
            log.exception("could not park message; it will be redelivered")
            raise NackMessage(delay=self.handling.policy.delay_after(meta.num_delivered)) from exc
        metrics.MESSAGES_PARKED.labels(stream=meta.stream, consumer=meta.consumer).inc()


def retry_policy(settings: CommonSettings) -> RetryPolicy:
    return RetryPolicy(
        tuple(settings.consumer_backoff_seconds),
        settings.consumer_max_deliver,
        settings.consumer_keep_alive_seconds,
        settings.consumer_backoff_cap_seconds,
    )


def nats_servers(nats_url: str) -> list[str]:
    """NATS_URL as nats-py wants it: a cluster is given as a comma-separated list of server URLs, all of which a
    client knows from the start, so it connects (and reconnects) to whichever node is up."""
    return [server.strip() for server in nats_url.split(",") if server.strip()]


def nats_credentials(settings: CommonSettings, default_user: str) -> tuple[str, str]:
    """(user, password) this process connects with: NATS_USER/NATS_PASSWORD, else `default_user` (the service's
    name) with its development password (deploy/nats_config.py gives nats-server the same)."""
    user = settings.nats_user or default_user
    return user, settings.nats_password or dev_nats_password(user)


def nats_connect_options(settings: CommonSettings, default_user: str) -> dict[str, Any]:
    """Servers and credentials for nats-py's connect (and FastStream's NatsBroker). Credentials written into
    NATS_URL itself (`nats://user:password@host:4222`, the tests' own user) win over NATS_USER/NATS_PASSWORD."""
    servers = nats_servers(settings.nats_url)
    if any(urllib.parse.urlsplit(server).username for server in servers):
        return {"servers": servers}
    user, password = nats_credentials(settings, default_user)
    return {"servers": servers, "user": user, "password": password}


def create_broker(settings: CommonSettings, service: Service) -> NatsBroker:
    options = nats_connect_options(settings, str(service))
    broker = NatsBroker(
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
    handling = FailureHandling(
        broker=broker,
        policy=retry_policy(settings),
        poison=PoisonCounts(),
    )
    broker.add_middleware(cast("Any", functools.partial(ServiceMiddleware, handling=handling)))
    # Inside ServiceMiddleware: a request past its deadline is dropped before it counts toward a handler's bound.
    bound_handlers(broker, settings)
    _consumer_replicas[broker] = settings.stream_replicas
    return broker


def nats_client(broker: NatsBroker) -> NatsClient | None:
    """The broker's live nats-py client, or None before it has connected."""
    try:
        return broker.connection
    except IncorrectState:
        return None


async def connect_with_retry(broker: NatsBroker, *, attempts: int = 60, delay_seconds: float = 0.5) -> None:
    """Connect at start-up even when NATS starts a moment after us; reconnects later are nats-py's job."""
    for attempt in range(1, attempts + 1):
        try:
            await broker.connect()
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            if attempt == attempts:
                raise
            log.warning("NATS not reachable yet; retrying", extra={"error": str(exc), "attempt": attempt})
            await asyncio.sleep(delay_seconds)
        else:
            return


@functools.cache
def _reply_decoder(reply_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(Ok[reply_type] | Err)


async def request[T](
    broker: NatsBroker,
    subject: str,
    payload: msgspec.Struct,
    reply_type: type[T],
    *,
    timeout: float,
    reply_grace_seconds: float = 0.0,
) -> T:
    """Ask a service and return its data; its Err replies are raised as ServiceError.

    The request carries its deadline (now + `timeout`, DEADLINE_HEADER). `reply_grace_seconds` waits that much
    longer than the deadline sent, so that work the service committed just before the deadline is answered."""
    client = nats_client(broker)
    if client is None or not client.is_connected:
        # While NATS is away, answer at once instead of waiting out the timeout in nats-py's reconnect buffer.
        log.warning("request while NATS is disconnected", extra={"subject": subject})
        raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE)
    headers = {DEADLINE_HEADER: str(now_ms() + int(timeout * 1000))}
    request_id = request_id_var.get()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    try:
        message = await broker.request(payload, subject, timeout=timeout + reply_grace_seconds, headers=headers)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        log.warning("request got no answer", extra={"subject": subject, "error": type(exc).__name__})
        raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE) from exc
    try:
        reply = _reply_decoder(cast("Any", reply_type)).decode(message.body)
    except msgspec.DecodeError as exc:
        log.exception("undecodable reply", extra={"subject": subject})
        raise ServiceError(ErrorCode.INTERNAL_ERROR) from exc
    if isinstance(reply, Err):
        raise reply.to_exception()
    return cast("T", reply.data)


def request_deadline_ms(headers: Mapping[str, str]) -> int | None:
    """The absolute deadline (Unix ms) a request was sent with, or None when it carries none (or garbage)."""
    value = headers.get(DEADLINE_HEADER)
    return int(value) if value is not None and value.isdigit() else None


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
# STREAM_REPLICAS of the settings each broker was created with: its durable consumers get as many replicas as
# the streams, so a consumer's state (what is acknowledged) survives the loss of a node like the messages do.
_consumer_replicas: weakref.WeakKeyDictionary[NatsBroker, int] = weakref.WeakKeyDictionary()


def durable_consumers(broker: NatsBroker) -> tuple[DurableConsumer, ...]:
    """The durable consumers declared on `broker` with `durable_subscriber`, in declaration order."""
    return tuple(_durable_consumers.get(broker, ()))


def stream_replicas(broker: NatsBroker) -> int:
    """STREAM_REPLICAS of the settings `broker` was created with (1 for a broker made elsewhere)."""
    return _consumer_replicas.get(broker, 1)


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
    document_publication(
        broker,
        parked_subject(stream.name, durable),
        None,
        description=f"Messages of {stream.name} whose `{durable}` handler failed as poison (not an outage) "
        "CONSUMER_MAX_DELIVER times, or permanently, parked by ServiceMiddleware on the PARKED stream for an operator "
        "(`services.auth.admin parked`): the original body unchanged, with Caseflow-Parked-Subject, -Stream, "
        "-Consumer, -Sequence, -Msg-Id, -Reason and -Deliveries headers.",
    )
    return subscriber


def document_publication(broker: NatsBroker, subject: str, payload: type | None, *, description: str) -> None:
    """Declare, for the AsyncAPI documents only (`make docs`), a subject this service publishes without a
    FastStream publisher: JetStream publishes through `publish_durable` or the case outbox, KEYS_CHANGED from the
    admin CLI, parked messages. Nothing is ever sent through the declaration: it is inert at run time.

    The channel is titled `<subject>:<payload type>`, like FastStream names a subscriber's `<subject>:<handler>`.
    """
    title = f"{subject}:{payload.__name__ if payload is not None else 'Message'}"
    broker.publisher(subject, title=title, description=description, schema=payload)


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

"""ServiceMiddleware: what happens around every message a FastStream subscriber handles: JetStream consumers, and
core NATS events with no reply (the gateway's KEYS_CHANGED). Request/reply handlers are not FastStream subscribers
(shared.messaging.responder); `error_reply` here is the rule both answer a failure by.

Design decisions a reader must know:
- A JetStream message is acknowledged only after its handler returns. A handler that raises is redelivered with a
  capped, growing delay (`RetryPolicy`), never dropped (FastStream's NATS default, REJECT_ON_ERROR, would drop it).
  Transient is not poison (shared.failures, shared.classify): a failure classified transient or misconfigured is
  redelivered for as long as it lasts and never parked. Any other failure is poison and counted per message, across
  every replica of the consumer (shared.messaging.poison); at `max_deliver` poison failures, or at once on
  `PermanentFailure`, the message is copied to the PARKED stream and terminated, so an operator can inspect, replay
  or drop it (`python -m services.auth.admin parked ...`).
- The request id travels in the `X-Request-Id` header and is bound to the logging context for every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import nats.errors
from faststream.exceptions import HandlerException, NackMessage, RejectMessage
from faststream.middlewares import BaseMiddleware
from faststream.nats import NatsBroker

from shared import metrics
from shared.classify import failure_kind, retried_while_it_lasts
from shared.contracts.rpc import Err
from shared.errors import ERROR_SPECS, ErrorCode, ServiceError
from shared.failures import DependencyFailure
from shared.logs import handled_subject_var, request_id_var
from shared.messaging.poison import LocalPoisonCounts
from shared.settings import CommonSettings
from shared.subjects import (
    MSG_ID_HEADER,
    PARKED_CONSUMER_HEADER,
    PARKED_DELIVERIES_HEADER,
    PARKED_MSG_ID_HEADER,
    PARKED_REASON_HEADER,
    PARKED_SEQUENCE_HEADER,
    PARKED_STREAM_HEADER,
    PARKED_SUBJECT_HEADER,
    REQUEST_ID_HEADER,
    parked_subject,
)

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from nats.aio.msg import Msg

log = logging.getLogger("caseflow.messaging")


class PermanentFailure(Exception):
    """Raised by a durable handler for a message that can never succeed: it is parked at once, not retried."""


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


def _is_jetstream(raw: Msg) -> bool:
    return bool(raw.reply) and raw.reply.startswith("$JS.ACK.")


def _message_key(raw: Msg) -> tuple[str, str, int]:
    meta = raw.metadata
    return meta.stream, meta.consumer, meta.sequence.stream


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


def error_reply(exc: Exception, subject: str) -> Err:
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
class ServiceMiddleware:
    """Binds the request id, turns failures into delayed redeliveries or parking (JetStream) or a logged failure (a
    core event), and counts every handled message by subject and outcome (`caseflow_nats_messages_total`).

    A configured object, as FastStream's own middlewares are: built once per broker (`create_broker`) with where
    to park, the retry policy and the poison counts (shared by the consumer's replicas:
    shared.messaging.poison); FastStream calls it for each message, and it returns that message's scope."""

    broker: NatsBroker
    policy: RetryPolicy
    poison: LocalPoisonCounts = field(default_factory=LocalPoisonCounts)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _MessageScope:
        return _MessageScope(msg, context=context, config=self)


class _MessageScope(BaseMiddleware):
    """One message's pass through ServiceMiddleware."""

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: ServiceMiddleware) -> None:
        super().__init__(msg, context=context)
        self.config = config

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
        token = request_id_var.set(msg.headers.get(REQUEST_ID_HEADER))
        raw_message = cast("Msg", msg.raw_message)
        jetstream = _is_jetstream(raw_message)
        subject_token = handled_subject_var.set(raw_message.subject)
        keep_alive = (
            asyncio.create_task(_keep_alive(raw_message, self.config.policy.keep_alive_seconds)) if jetstream else None
        )
        started = time.perf_counter()
        # Every way out below sets the outcome the metrics record: ok, an error code, retried or parked.
        outcome: str = metrics.OUTCOME_OK
        try:
            result = await call_next(msg)
            if jetstream:
                self.config.poison.handled(_message_key(raw_message))
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
            # A core event: nobody waits for an answer, so the failure is logged and counted by its kind.
            outcome = error_reply(exc, raw_message.subject).code
            return None
        finally:
            metrics.observe_message(raw_message.subject, outcome, time.perf_counter() - started)
            if keep_alive is not None:
                keep_alive.cancel()
            request_id_var.reset(token)
            handled_subject_var.reset(subject_token)

    async def _retry_or_park(self, raw: Msg, exc: Exception) -> None:
        """Nack with the policy's delay, or park. A transient or misconfigured failure is never parked however
        long it lasts; every other failure adds one to the message's poison count, and the count reaching
        CONSUMER_MAX_DELIVER (or a PermanentFailure) parks it."""
        policy = self.config.policy
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
        poisoned = await self.config.poison.add(key)
        if isinstance(exc, PermanentFailure) or poisoned >= policy.max_deliver:
            await self._park(raw, exc, poison_failures=poisoned)
            await self.config.poison.parked(key)
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
            await self.config.broker.connection.jetstream().publish(
                parked_subject(meta.stream, meta.consumer), raw.data, headers=headers
            )
        except Exception:
            log.exception("could not park message; it will be redelivered")
            raise NackMessage(delay=self.config.policy.delay_after(meta.num_delivered)) from exc
        metrics.MESSAGES_PARKED.labels(stream=meta.stream, consumer=meta.consumer).inc()


def retry_policy(settings: CommonSettings) -> RetryPolicy:
    return RetryPolicy(
        tuple(settings.consumer_backoff_seconds),
        settings.consumer_max_deliver,
        settings.consumer_keep_alive_seconds,
        settings.consumer_backoff_cap_seconds,
    )

"""The delivery loop: claim a due delivery, sign and send it, record the attempt, schedule the next one.

Design decision: MongoDB is the only scheduler. Every replica polls `deliveries` for due work and claims it
with a conditional update (store.claim_due), so several replicas never send the same attempt twice, and a
restarted replica carries on where the schedule stands. The in-process wake-ups (a new event stored here, a
retry this replica scheduled) only make attempts start on time; correctness never depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence

from services.webhook import domain
from services.webhook.model import AttemptRecord, DeliveryRecord
from services.webhook.sender import WebhookSender
from services.webhook.signing import SigningSecrets, signature_headers
from services.webhook.store import DeliveryStore
from shared import metrics
from shared.clock import Clock, system_clock, unix_ms
from shared.errors import ErrorCode, ServiceError
from shared.logs import case_id_var, client_id_var

log = logging.getLogger("caseflow.webhook.dispatcher")

# Auth did not answer: nothing was sent, so no attempt is spent; the delivery is tried again after this.
SECRET_UNAVAILABLE_RETRY_MS = 5_000
# An attempt's `result` label: the verdict, except that an attempt to retry reads as what it was, a failure.
_ATTEMPT_RESULT: dict[domain.Verdict, str] = {
    "delivered": "delivered",
    "gone": "gone",
    "refused": "refused",
    "retry": "failed",
}


class Dispatcher:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        secrets: SigningSecrets,
        sender: WebhookSender,
        schedule: Sequence[float],
        lease_seconds: float,
        poll_seconds: float,
        concurrency: int,
        drain_seconds: float,
        clock: Clock = system_clock,
    ) -> None:
        self.clock = clock
        self.store = store
        self.secrets = secrets
        self.sender = sender
        self.schedule = tuple(schedule)
        self.lease_ms = int(lease_seconds * 1000)
        self.poll_seconds = poll_seconds
        self.drain_seconds = drain_seconds
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    def now_ms(self) -> int:
        return unix_ms(self.clock())

    def wake(self) -> None:
        """Look for due work now (a delivery was just stored or became due)."""
        self._wake.set()

    def wake_in(self, delay_seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(delay_seconds, 0.0), self._wake.set)

    async def deliver_forever(self) -> None:
        try:
            while True:
                await self._slots.acquire()
                claim = uuid.uuid4().hex
                try:
                    record = await self.store.claim_due(now=self.now_ms(), lease_ms=self.lease_ms, claim=claim)
                except BaseException:
                    self._slots.release()
                    raise
                if record is None:
                    self._slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(self._attempt_and_release(record, claim))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            await self._drain()

    async def _drain(self) -> None:
        """On shutdown, let attempts in flight finish and be recorded (a deploy should not resend them)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=self.drain_seconds)
        # Whatever is still running keeps its claim; another replica retries it after the lease.
        for task in list(self._in_flight):
            task.cancel()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        self._wake.clear()

    async def _attempt_and_release(self, record: DeliveryRecord, claim: str) -> None:
        case_id_var.set(record.case_id)
        client_id_var.set(record.client_id)
        try:
            await self.attempt(record, claim)
        except Exception:
            # The claim stays; the lease makes the delivery due again, so a bug here delays but never drops it.
            log.exception("delivery attempt crashed", extra={"event_id": record.event_id})
        finally:
            self._slots.release()

    async def attempt(self, record: DeliveryRecord, claim: str) -> None:
        """One attempt of a claimed delivery, recorded under `claim`."""
        try:
            secret = await self.secrets.current(record.client_id)
        except ServiceError as exc:
            if exc.code in (ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.INTERNAL_ERROR):
                log.warning("signing secret unavailable; delivery postponed", extra={"event_id": record.event_id})
                await self.store.release(
                    record.event_id, claim=claim, next_attempt_at=self.now_ms() + SECRET_UNAVAILABLE_RETRY_MS
                )
                return
            # Auth says the client cannot have webhooks (e.g. it no longer exists): nothing to retry for.
            result = domain.AttemptResult(
                status=None,
                error=domain.DESTINATION_NOT_ALLOWED,
                latency_ms=0,
                refused=True,
                detail=f"no signing secret: {exc.message}",
            )
            await self._record(record, claim, at=self.now_ms(), result=result)
            return
        started = self.clock()
        headers = signature_headers(secret, event_id=record.event_id, body=record.body, at=started)
        result = await self.sender.send(record.url, record.body, headers)
        await self._record(record, claim, at=unix_ms(started), result=result)

    async def _record(self, record: DeliveryRecord, claim: str, *, at: int, result: domain.AttemptResult) -> None:
        attempt = record.round_attempts + 1
        metrics.WEBHOOK_ATTEMPTS.labels(result=_ATTEMPT_RESULT[domain.verdict(result)]).inc()
        step = domain.after_attempt(self.schedule, attempt=attempt, result=result)
        next_attempt_at = None if step.delay_seconds is None else self.now_ms() + int(step.delay_seconds * 1000)
        kept = await self.store.record_attempt(
            record.event_id,
            claim=claim,
            attempt=AttemptRecord(at=at, status=result.status, latency_ms=result.latency_ms, error=result.error),
            state=step.state,
            next_attempt_at=next_attempt_at,
            round_attempts=attempt,
        )
        log.info(
            "webhook attempt recorded",
            extra={
                "event_id": record.event_id,
                "attempt": attempt,
                "http_status": result.status,
                "error": result.error,
                "detail": result.detail,
                "latency_ms": result.latency_ms,
                "state": step.state if kept else "claim lost",
            },
        )
        if kept and step.delay_seconds is not None:
            self.wake_in(step.delay_seconds)

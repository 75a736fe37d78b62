"""Case timers as JetStream message schedules: the scheduler's idle cost does not grow with the scheduled cases.

Design decision a reader must know: the due time of a case (`lifecycle.due_at`: its next follow-up, the end of a
lease, or the confirmation time of a create not yet confirmed) is armed, after every write that changes it, as one
scheduled message per case on `case.timer.at.<caseId>` (`Nats-Schedule: @at <RFC3339>`); the stream keeps one
message per subject, so a new time replaces the old one. At that time nats-server publishes the body to
`case.timer.due.<caseId>`, and the worker's durable consumer applies `FollowUpDue` to that one case (or settles a
create still awaiting its confirmation). Nothing polls MongoDB on the hot path, so an idle scheduler costs
nats-server's timer, not a scan of every scheduled case.

A timer may be stale (the case was rescheduled, or finished): `FollowUpDue` changes nothing until the case is due,
so a stale timer is harmless. A timer may be lost (the process died between the case write and the arm, or NATS was
away): the worker's safety round (`Worker.safety_round`, one query, `CaseStore.needing_attention`, at start-up and
every SCHEDULER_SAFETY_SCAN_SECONDS) finds every due case and every unsettled create anyway, so a lost timer delays
a case by at most that interval, never strands it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Final

import msgspec
from faststream.nats import NatsBroker
from nats.js.api import Header

from services.case.lifecycle import due_at
from services.case.model import CaseRecord
from shared import metrics
from shared.subjects import CASE_TIMERS, TIMER_DUE_TTL, timer_due_subject, timer_schedule_subject

log = logging.getLogger("caseflow.case.timers")

ARM_TIMEOUT_SECONDS: Final = 2.0


class TimerFired(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The body of a case's timer, published by nats-server to `case.timer.due.<caseId>` when it fires."""

    case_id: str
    due_at: int  # Unix ms the timer was armed for


def schedule_expression(at_ms: int) -> str:
    """`@at <RFC3339 UTC, millisecond precision>`, as nats-server's message schedules read it."""
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return f"@at {moment.strftime('%Y-%m-%dT%H:%M:%S.')}{moment.microsecond // 1000:03d}Z"


class CaseTimers:
    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    async def follow(self, before: CaseRecord | None, after: CaseRecord) -> None:
        """Arm `after`'s timer when a write changed its due time. Best effort: a failure is logged and counted,
        and the safety scan covers the case."""
        armed = due_at(after)
        if armed is None or (before is not None and due_at(before) == armed):
            return
        await self.arm_or_leave_to_the_scan(after.case_id, armed)

    async def arm_or_leave_to_the_scan(self, case_id: str, at_ms: int) -> None:
        """`arm`, best effort: a failure is logged and counted, and the safety scan covers the case."""
        try:
            await self.arm(case_id, at_ms)
        except Exception as exc:
            metrics.TIMER_ARM_FAILURES.inc()
            log.warning(
                "could not arm the case's timer; the safety scan will find it",
                extra={"case_id": case_id, "error": type(exc).__name__},
            )

    async def arm(self, case_id: str, at_ms: int) -> None:
        body = msgspec.json.encode(TimerFired(case_id=case_id, due_at=at_ms))
        headers = {
            Header.SCHEDULE: schedule_expression(at_ms),
            Header.SCHEDULE_TARGET: timer_due_subject(case_id),
            Header.SCHEDULE_TTL: TIMER_DUE_TTL,
        }
        await self.broker.connection.jetstream().publish(
            timer_schedule_subject(case_id),
            body,
            stream=CASE_TIMERS.name,
            headers={name.value: value for name, value in headers.items()},
            timeout=ARM_TIMEOUT_SECONDS,
        )

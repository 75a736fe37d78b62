"""The billing service's NATS handlers: reserve and release one case unit, report a client's usage, and report
every client's usage in a month (for operators).

Thin adapters: the month and the cap come from the domain (with the injected clock), atomicity and
idempotency from the store's single conditional update. A request naming a plan that `PLANS` does not
configure is an operator error, logged as such, and refused with FORBIDDEN (the client may not create cases
until its plan is fixed); it is never metered against some other plan's cap.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final

from faststream.nats import NatsBroker

from services.billing.domain import (
    PlanCaps,
    UnknownPlan,
    monthly_cap,
    next_month_start_ms,
    remaining_units,
    usage_month,
)
from services.billing.store import ReserveOutcome, UsageStore
from shared import metrics
from shared.clock import Clock, system_clock, unix_ms
from shared.contracts.billing import (
    RELEASE,
    RESERVE,
    USAGE,
    USAGE_MONTH_PATTERN,
    USAGE_REPORT,
    ClientUsage,
    GetUsage,
    GetUsageReport,
    Released,
    ReleaseUnit,
    Reservation,
    ReserveUnit,
    Usage,
    UsageReport,
)
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.messaging.responder import rpc_subscriber
from shared.subjects import Service, queue_group

log = logging.getLogger("caseflow.billing")

# Every POST /cases reserves a unit: answer several at once per replica (the database arbitrates the cap).
CONCURRENT_REQUESTS: Final = 16
# The metrics' outcome of a reservation.
_RESERVATION_OUTCOME: Final = {
    ReserveOutcome.RESERVED: "granted",
    ReserveOutcome.ALREADY_RESERVED: "repeated",
    ReserveOutcome.LIMIT_REACHED: "refused",
}


def _cap_of_configured_plan(plans: PlanCaps, plan: str) -> int | None:
    try:
        return monthly_cap(plans, plan)
    except UnknownPlan as exc:
        log.error("request names a plan missing from PLANS", extra={"plan": exc.plan})
        raise ServiceError(
            ErrorCode.FORBIDDEN, "Your plan is not available; contact support to have it set up."
        ) from None


@dataclass(frozen=True)
class BillingApi:
    """What billing answers, each method one request: plan caps from PLANS, counters in `usage`."""

    broker: NatsBroker
    store: UsageStore
    plans: PlanCaps
    clock: Clock = system_clock

    async def reserve(self, request: ReserveUnit) -> Reservation:
        cap = _cap_of_configured_plan(self.plans, request.plan)
        now = self.clock()
        month = usage_month(now)
        outcome = await self.store.reserve_unit(
            client_id=request.client_id,
            month=month,
            reservation_id=request.reservation_id,
            cap=cap,
            now=unix_ms(now),
        )
        metrics.USAGE_RESERVATIONS.labels(plan=request.plan, outcome=_RESERVATION_OUTCOME[outcome]).inc()
        if outcome is ReserveOutcome.LIMIT_REACHED:
            raise ServiceError(ErrorCode.USAGE_LIMIT_REACHED)
        return Reservation(reservation_id=request.reservation_id, month=month)

    async def release(self, request: ReleaseUnit) -> Released:
        released = await self.store.release_unit(
            client_id=request.client_id,
            month=request.month,
            reservation_id=request.reservation_id,
            now=unix_ms(self.clock()),
        )
        if released:
            metrics.USAGE_RELEASES.inc()
        return Released(released=released)

    async def usage(self, request: GetUsage) -> Usage:
        cap = _cap_of_configured_plan(self.plans, request.plan)
        now = self.clock()
        month = usage_month(now)
        used = await self.store.units_used(client_id=request.client_id, month=month)
        return Usage(
            month=month,
            used=used,
            limit=cap,
            remaining=remaining_units(cap, used),
            resets_at=next_month_start_ms(now),
        )

    async def usage_report(self, request: GetUsageReport) -> UsageReport:
        month = request.month or usage_month(self.clock())
        if not re.fullmatch(USAGE_MONTH_PATTERN, month):
            raise ServiceError(ErrorCode.INVALID_REQUEST, "month: must be a UTC month as YYYY-MM")
        used = await self.store.units_used_by_client(month=month, client_id=request.client_id)
        named = set(request.plans) if request.client_id is None else {request.client_id}
        return UsageReport(
            month=month,
            clients=[
                _client_usage(
                    client_id,
                    month=month,
                    used=used.get(client_id, 0),
                    plan=request.plans.get(client_id),
                    plans=self.plans,
                )
                for client_id in sorted(named | set(used))
            ],
        )


def register(api: BillingApi) -> None:
    broker = api.broker
    queue = queue_group(Service.BILLING)

    @rpc_subscriber(broker, RESERVE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def reserve_case_unit(request: ReserveUnit) -> Ok[Reservation]:
        return Ok(await api.reserve(request))

    @rpc_subscriber(broker, RELEASE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def release_case_unit(request: ReleaseUnit) -> Ok[Released]:
        return Ok(await api.release(request))

    @rpc_subscriber(broker, USAGE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def report_usage(request: GetUsage) -> Ok[Usage]:
        return Ok(await api.usage(request))

    @rpc_subscriber(broker, USAGE_REPORT, queue=queue)
    async def report_usage_by_client(request: GetUsageReport) -> Ok[UsageReport]:
        return Ok(await api.usage_report(request))


def _client_usage(client_id: str, *, month: str, used: int, plan: str | None, plans: PlanCaps) -> ClientUsage:
    return ClientUsage(
        client_id=client_id,
        month=month,
        used=used,
        plan=plan,
        limit=None if plan is None else plans.get(plan),
        plan_configured=plan is not None and plan in plans,
    )

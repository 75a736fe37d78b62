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
from typing import Final

from faststream.nats import NatsBroker

from services.billing.domain import (
    Clock,
    PlanCaps,
    UnknownPlan,
    monthly_cap,
    next_month_start_ms,
    remaining_units,
    to_unix_ms,
    usage_month,
    utc_now,
)
from services.billing.store import ReserveOutcome, UsageStore
from shared import metrics
from shared.admission import rpc_subscriber
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
from shared.subjects import Service, queue_group

log = logging.getLogger("caseflow.billing")

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


# Every POST /cases reserves a unit: answer several at once per replica (the database arbitrates the cap).
CONCURRENT_REQUESTS: Final = 16


def register_billing_handlers(
    broker: NatsBroker, store: UsageStore, *, plans: PlanCaps, clock: Clock = utc_now
) -> None:
    queue = queue_group(Service.BILLING)

    @rpc_subscriber(broker, RESERVE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def reserve_case_unit(request: ReserveUnit) -> Ok[Reservation]:
        cap = _cap_of_configured_plan(plans, request.plan)
        now = clock()
        month = usage_month(now)
        outcome = await store.reserve_unit(
            client_id=request.client_id,
            month=month,
            reservation_id=request.reservation_id,
            cap=cap,
            now=to_unix_ms(now),
        )
        metrics.USAGE_RESERVATIONS.labels(plan=request.plan, outcome=_RESERVATION_OUTCOME[outcome]).inc()
        if outcome is ReserveOutcome.LIMIT_REACHED:
            raise ServiceError(ErrorCode.USAGE_LIMIT_REACHED)
        return Ok(Reservation(reservation_id=request.reservation_id, month=month))

    @rpc_subscriber(broker, RELEASE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def release_case_unit(request: ReleaseUnit) -> Ok[Released]:
        released = await store.release_unit(
            client_id=request.client_id,
            month=request.month,
            reservation_id=request.reservation_id,
            now=to_unix_ms(clock()),
        )
        if released:
            metrics.USAGE_RELEASES.inc()
        return Ok(Released(released=released))

    @rpc_subscriber(broker, USAGE, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def report_usage(request: GetUsage) -> Ok[Usage]:
        cap = _cap_of_configured_plan(plans, request.plan)
        now = clock()
        month = usage_month(now)
        used = await store.units_used(client_id=request.client_id, month=month)
        return Ok(
            Usage(
                month=month,
                used=used,
                limit=cap,
                remaining=remaining_units(cap, used),
                resets_at=next_month_start_ms(now),
            )
        )

    @rpc_subscriber(broker, USAGE_REPORT, queue=queue)
    async def report_usage_by_client(request: GetUsageReport) -> Ok[UsageReport]:
        month = request.month or usage_month(clock())
        if not re.fullmatch(USAGE_MONTH_PATTERN, month):
            raise ServiceError(ErrorCode.INVALID_REQUEST, "month: must be a UTC month as YYYY-MM")
        used = await store.units_used_by_client(month=month, client_id=request.client_id)
        named = set(request.plans) if request.client_id is None else {request.client_id}
        return Ok(
            UsageReport(
                month=month,
                clients=[
                    _client_usage(
                        client_id,
                        month=month,
                        used=used.get(client_id, 0),
                        plan=request.plans.get(client_id),
                        plans=plans,
                    )
                    for client_id in sorted(named | set(used))
                ],
            )
        )


def _client_usage(client_id: str, *, month: str, used: int, plan: str | None, plans: PlanCaps) -> ClientUsage:
    return ClientUsage(
        client_id=client_id,
        month=month,
        used=used,
        plan=plan,
        limit=None if plan is None else plans.get(plan),
        plan_configured=plan is not None and plan in plans,
    )

"""Billing's pure rules: plan caps from configuration, the UTC month a unit counts in, what remains.

Design decision: a plan that is not configured has no cap at all rather than some fallback cap, and is
refused (`UnknownPlan`): silently metering a client against the wrong plan is worse than a loud error an
operator fixes in `PLANS`. Time comes from an injected clock (shared.clock) so tests can cross a month boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

# Plan name → monthly cap in cases; None means no cap (configured as 0).
type PlanCaps = Mapping[str, int | None]


class UnknownPlan(Exception):
    def __init__(self, plan: str) -> None:
        self.plan = plan
        super().__init__(f"plan {plan!r} is not configured in PLANS")


def parse_plans(spec: str) -> dict[str, int | None]:
    """`free:100,pro:10000,unlimited:0` → {"free": 100, "pro": 10000, "unlimited": None}."""
    caps: dict[str, int | None] = {}
    for pair in spec.split(","):
        name, separator, cap_text = pair.strip().partition(":")
        if not name or not separator or not cap_text.isdigit():
            raise ValueError(f"{pair!r} is not plan:cap")
        if name in caps:
            raise ValueError(f"plan {name!r} is listed twice")
        cap = int(cap_text)
        caps[name] = cap or None
    return caps


def monthly_cap(plans: PlanCaps, plan: str) -> int | None:
    try:
        return plans[plan]
    except KeyError:
        raise UnknownPlan(plan) from None


def usage_month(now: datetime) -> str:
    """The UTC calendar month a unit reserved at `now` counts in: `YYYY-MM`."""
    return _in_utc(now).strftime("%Y-%m")


def next_month_start_ms(now: datetime) -> int:
    """Unix ms of the first instant of the UTC month after `now`'s: when usage resets."""
    utc = _in_utc(now)
    year, month = (utc.year + 1, 1) if utc.month == 12 else (utc.year, utc.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1000


def _in_utc(now: datetime) -> datetime:
    # A naive datetime would silently be read as local time: a clock must say which zone it is in.
    if now.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return now.astimezone(UTC)


def remaining_units(cap: int | None, used: int) -> int | None:
    """None without a cap; never negative (a cap lowered mid-month can leave usage above it)."""
    return None if cap is None else max(cap - used, 0)

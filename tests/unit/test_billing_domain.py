"""Billing's pure rules: plan parsing, the UTC month a unit counts in, when usage resets, what remains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.billing.domain import (
    UnknownPlan,
    monthly_cap,
    next_month_start_ms,
    parse_plans,
    remaining_units,
    usage_month,
)
from shared.settings import BillingSettings


def ms(year: int, month: int, day: int = 1) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 1000


def test_the_default_plans_parse_with_zero_meaning_no_cap() -> None:
    assert parse_plans(BillingSettings().plans) == {"free": 100, "pro": 10000, "unlimited": None}


@pytest.mark.parametrize(
    ("spec", "caps"),
    [
        ("tiny:10", {"tiny": 10}),
        ("a:1,b:0", {"a": 1, "b": None}),
        ("free:100, pro:5", {"free": 100, "pro": 5}),
    ],
)
def test_plans_parse(spec: str, caps: dict[str, int | None]) -> None:
    assert parse_plans(spec) == caps


@pytest.mark.parametrize("spec", ["", "free", "free:", ":5", "free:-1", "free:ten", "free:1,free:2"])
def test_bad_plan_lists_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"plan|not plan:cap"):
        parse_plans(spec)


def test_an_unconfigured_plan_has_no_cap_to_fall_back_on() -> None:
    plans = parse_plans("free:100,unlimited:0")
    assert monthly_cap(plans, "free") == 100
    assert monthly_cap(plans, "unlimited") is None
    with pytest.raises(UnknownPlan):
        monthly_cap(plans, "gold")


@pytest.mark.parametrize(
    ("now", "month", "resets_at"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01", ms(2026, 2)),
        (datetime(2026, 2, 28, 23, 59, 59, 999000, tzinfo=UTC), "2026-02", ms(2026, 3)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), "2028-02", ms(2028, 3)),
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2026-12", ms(2027, 1)),
        (datetime(2027, 1, 1, 0, 0, tzinfo=UTC), "2027-01", ms(2027, 2)),
        # Still 31 December in New York, already January in UTC: the UTC month counts.
        (datetime(2026, 12, 31, 20, 30, tzinfo=timezone(timedelta(hours=-5))), "2027-01", ms(2027, 2)),
        # Already 1 January in Tokyo, still December in UTC.
        (datetime(2027, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))), "2026-12", ms(2027, 1)),
    ],
)
def test_usage_counts_per_utc_month_and_resets_at_the_next_one(now: datetime, month: str, resets_at: int) -> None:
    assert usage_month(now) == month
    assert next_month_start_ms(now) == resets_at


def test_a_naive_clock_is_refused_rather_than_read_as_local_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        usage_month(datetime(2026, 12, 31, 23, 30))


@pytest.mark.parametrize(
    ("cap", "used", "remaining"),
    [(10, 0, 10), (10, 9, 1), (10, 10, 0), (10, 12, 0), (None, 0, None), (None, 500, None)],
)
def test_remaining_units(cap: int | None, used: int, remaining: int | None) -> None:
    assert remaining_units(cap, used) == remaining

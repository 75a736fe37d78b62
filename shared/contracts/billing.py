"""Billing service contracts: reserve and release one case unit against the plan cap, and read usage.

A reservation is idempotent by `reservation_id`: reserving twice with the same id counts once, and releasing
an id that was never reserved (or already released) changes nothing.
"""

from __future__ import annotations

from typing import Final

from shared.contracts.base import Contract

RESERVE: Final = "billing.rpc.reserve"
RELEASE: Final = "billing.rpc.release"
USAGE: Final = "billing.rpc.usage"
USAGE_REPORT: Final = "billing.rpc.usage_report"

# A usage month: the UTC calendar month "YYYY-MM" a unit counts in.
USAGE_MONTH_PATTERN: Final = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class ReserveUnit(Contract, frozen=True):
    """Replies Ok[Reservation] or Err USAGE_LIMIT_REACHED when the plan's monthly cap is reached; Err FORBIDDEN
    when `plan` is not configured in billing's PLANS (never metered against another plan's cap)."""

    client_id: str
    plan: str
    reservation_id: str


class Reservation(Contract, frozen=True):
    reservation_id: str
    month: str  # "YYYY-MM", UTC


class ReleaseUnit(Contract, frozen=True):
    client_id: str
    month: str
    reservation_id: str


class Released(Contract, frozen=True):
    released: bool  # False when there was nothing to release


class GetUsage(Contract, frozen=True):
    """Replies Ok[Usage] for the current UTC month; Err FORBIDDEN when `plan` is not configured."""

    client_id: str
    plan: str


class Usage(Contract, frozen=True):
    month: str
    used: int
    limit: int | None  # None: the plan has no cap
    remaining: int | None
    resets_at: int  # Unix ms of the next month's start (UTC)


class GetUsageReport(Contract, frozen=True):
    """Every client's usage in one UTC month, for operators (the admin CLI's `usage`). Replies Ok[UsageReport];
    Err INVALID_REQUEST for a month that is not "YYYY-MM".

    Auth owns the clients' plans and billing the counters and caps, so the caller passes the plans it knows
    (client id → plan name): they give each row its limit, and the clients named there appear even when they
    used nothing that month. A client with usage but no plan given is reported with `plan_configured` False.
    """

    month: str | None = None  # "YYYY-MM" (UTC); None: billing's current month
    client_id: str | None = None  # only this client
    plans: dict[str, str] = {}


class ClientUsage(Contract, frozen=True):
    client_id: str
    month: str
    used: int
    plan: str | None  # as given in the request
    limit: int | None  # the plan's monthly cap; None when it has none (or the plan is not configured)
    plan_configured: bool  # False when no plan was given or PLANS does not configure it: the limit is unknown


class UsageReport(Contract, frozen=True):
    month: str
    clients: list[ClientUsage]  # ordered by client id

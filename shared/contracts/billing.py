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

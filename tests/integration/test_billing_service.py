"""The billing service's handlers over a real nats-server and MongoDB: caps, idempotency, release, months.

Two replicas of the service answer in the same queue group (the cap must hold across replicas, not just
within one process), on a NATS server of this module's own (the session's server also carries the e2e stack,
whose billing service answers the same subjects from another database). Time comes from a settable clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer, private_nats_server
from services.billing import store
from services.billing.domain import parse_plans
from services.billing.handlers import BillingApi, register
from services.billing.store import INDEXES, UsageStore
from shared.contracts.billing import (
    RELEASE,
    RESERVE,
    USAGE,
    GetUsage,
    Released,
    ReleaseUnit,
    Reservation,
    ReserveUnit,
    Usage,
)
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import BillingSettings, load_settings
from shared.subjects import Service

PLANS = "tiny:10,free:100,unlimited:0"
REPLICAS = 2


class SettableClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Overrides the session's server for this module (and so `raw_broker` connects here)."""
    with private_nats_server(Path(tmp_path_factory.mktemp("billing-nats"))) as server:
        yield server


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))


@pytest.fixture
async def billing(
    nats_server: NatsServer, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document], clock: SettableClock
) -> AsyncIterator[NatsBroker]:
    """REPLICAS billing services on the test database; yields a client broker to ask them."""
    settings = load_settings(BillingSettings, {"NATS_URL": nats_server.url, "PLANS": PLANS})
    await ensure_indexes(mongo_db, INDEXES)
    replicas = [create_broker(settings, Service.BILLING) for _ in range(REPLICAS)]
    for replica in replicas:
        register(BillingApi(broker=replica, store=UsageStore(mongo_db), plans=parse_plans(settings.plans), clock=clock))
        await replica.start()
        await flush_to_server(replica.connection)
    yield raw_broker
    for replica in replicas:
        await replica.stop()


async def reserve(
    billing: NatsBroker, reservation_id: str, *, plan: str = "tiny", client_id: str = "c1"
) -> Reservation:
    payload = ReserveUnit(client_id=client_id, plan=plan, reservation_id=reservation_id)
    return await request(billing, RESERVE, payload, Reservation, timeout=10)


async def release(billing: NatsBroker, reservation_id: str, *, month: str, client_id: str = "c1") -> bool:
    payload = ReleaseUnit(client_id=client_id, month=month, reservation_id=reservation_id)
    return (await request(billing, RELEASE, payload, Released, timeout=10)).released


async def usage(billing: NatsBroker, *, plan: str = "tiny", client_id: str = "c1") -> Usage:
    return await request(billing, USAGE, GetUsage(client_id=client_id, plan=plan), Usage, timeout=10)


async def outcome(call: Any) -> str:
    """'ok' or the error code, so concurrent results can be counted."""
    try:
        await call
    except ServiceError as exc:
        return str(exc.code)
    return "ok"


async def stored(db: AsyncDatabase[Document], *, month: str, client_id: str = "c1") -> Document | None:
    return await db[store.USAGE].find_one(
        {"clientId": client_id, "month": month}, {"_id": 0, "used": 1, "reservations": 1}
    )


async def test_fifty_concurrent_reserves_against_a_cap_of_ten__exactly_ten_succeed(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    ids = [f"case-{n}" for n in range(50)]
    outcomes = await asyncio.gather(*(outcome(reserve(billing, reservation_id)) for reservation_id in ids))
    assert sorted(outcomes) == ["USAGE_LIMIT_REACHED"] * 40 + ["ok"] * 10
    granted = {reservation_id for reservation_id, result in zip(ids, outcomes, strict=True) if result == "ok"}
    document = await stored(mongo_db, month="2026-01")
    assert document is not None
    assert document["used"] == 10
    assert set(document["reservations"]) == granted
    assert (await usage(billing)).used == 10


async def test_reserving_again_with_the_same_id_counts_once_even_concurrently_and_at_the_cap(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    replies = await asyncio.gather(*(reserve(billing, "case-same") for _ in range(10)))
    assert set(replies) == {Reservation(reservation_id="case-same", month="2026-01")}
    assert (await usage(billing)).used == 1
    for n in range(9):
        await reserve(billing, f"case-{n}")
    assert await outcome(reserve(billing, "case-one-too-many")) == "USAGE_LIMIT_REACHED"
    # A retry of a reservation that counted is still that reservation, not a refusal.
    assert await reserve(billing, "case-same") == Reservation(reservation_id="case-same", month="2026-01")
    assert await reserve(billing, "case-4") == Reservation(reservation_id="case-4", month="2026-01")
    assert (await usage(billing)).used == 10


async def test_release_gives_the_unit_back_once_and_only_for_a_reserved_id(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    for n in range(10):
        await reserve(billing, f"case-{n}")
    assert await outcome(reserve(billing, "case-new")) == "USAGE_LIMIT_REACHED"
    assert await release(billing, "case-3", month="2026-01") is True
    assert (await usage(billing)).used == 9
    for not_reserved in (
        release(billing, "case-3", month="2026-01"),  # released already
        release(billing, "case-never", month="2026-01"),
        release(billing, "case-4", month="2025-12"),  # another month
        release(billing, "case-4", month="2026-01", client_id="c2"),  # another client
    ):
        assert await not_reserved is False
    assert (await usage(billing)).used == 9
    # The unit given back can be reserved again, and only that one.
    assert await outcome(reserve(billing, "case-new")) == "ok"
    assert await outcome(reserve(billing, "case-newer")) == "USAGE_LIMIT_REACHED"
    document = await stored(mongo_db, month="2026-01")
    assert document is not None
    assert document["used"] == 10
    assert "case-3" not in document["reservations"]


async def test_concurrent_releases_of_one_reservation_give_back_one_unit(billing: NatsBroker) -> None:
    await reserve(billing, "case-1")
    released = await asyncio.gather(*(release(billing, "case-1", month="2026-01") for _ in range(5)))
    assert sorted(released) == [False] * 4 + [True]
    assert (await usage(billing)).used == 0


async def test_a_new_utc_month_starts_from_zero_and_leaves_the_old_month_untouched(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document], clock: SettableClock
) -> None:
    for n in range(10):
        assert (await reserve(billing, f"jan-{n}")).month == "2026-01"
    assert await outcome(reserve(billing, "jan-late")) == "USAGE_LIMIT_REACHED"

    clock.now += timedelta(seconds=1)  # 2026-02-01T00:00:00Z
    february = await usage(billing)
    assert (february.month, february.used, february.remaining) == ("2026-02", 0, 10)
    assert (await reserve(billing, "feb-0")).month == "2026-02"
    # A January create that fails now gives its unit back to January, where it was counted.
    assert await release(billing, "jan-9", month="2026-01") is True
    january = await stored(mongo_db, month="2026-01")
    assert january is not None
    assert january["used"] == 9
    assert (await usage(billing)).used == 1


async def test_usage_reports_the_cap_what_remains_and_when_it_resets(billing: NatsBroker, clock: SettableClock) -> None:
    clock.now = datetime(2026, 12, 15, 8, 30, tzinfo=UTC)
    for n in range(3):
        await reserve(billing, f"case-{n}")
        await reserve(billing, f"case-{n}", plan="unlimited", client_id="big")
    assert await usage(billing) == Usage(
        month="2026-12",
        used=3,
        limit=10,
        remaining=7,
        resets_at=int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000),
    )
    unlimited = await usage(billing, plan="unlimited", client_id="big")
    assert (unlimited.used, unlimited.limit, unlimited.remaining) == (3, None, None)
    assert await usage(billing, client_id="nobody-yet") == msgspec.structs.replace(
        await usage(billing), used=0, remaining=10
    )
    # On the wire, no cap is an explicit null.
    assert b'"limit":null' in msgspec.json.encode(unlimited)


async def test_an_unlimited_plan_never_refuses_but_still_counts(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    outcomes = await asyncio.gather(*(outcome(reserve(billing, f"case-{n}", plan="unlimited")) for n in range(30)))
    assert outcomes == ["ok"] * 30
    assert (await usage(billing, plan="unlimited")).used == 30


async def test_a_plan_missing_from_plans_is_refused_and_never_metered(
    billing: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    assert await outcome(reserve(billing, "case-1", plan="gold")) == ErrorCode.FORBIDDEN
    assert await outcome(usage(billing, plan="gold")) == ErrorCode.FORBIDDEN
    assert await mongo_db[store.USAGE].count_documents({}) == 0

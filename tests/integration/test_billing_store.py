"""What a reservation costs the database, measured in what travels: the month's usage document holds up to
RECENT_RESERVATIONS ids (~45 KB at the bound), and a create reserves once, so that document must not come back
with every reservation. Replies are read with PyMongo's command monitoring, against a real server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from services.billing.store import INDEXES, ReserveOutcome, UsageStore
from shared.mongo import Document, ensure_indexes


class ReplyCapture(monitoring.CommandListener):
    def __init__(self) -> None:
        self.find_and_modify_values: list[Document | None] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "findAndModify":
            self.find_and_modify_values.append(event.reply.get("value"))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def monitored_usage(mongo_url: str) -> AsyncIterator[tuple[UsageStore, ReplyCapture]]:
    capture = ReplyCapture()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, event_listeners=[capture]
    )
    db: AsyncDatabase[Document] = client[f"test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(db, INDEXES, attempts=1)
    yield UsageStore(db), capture
    await client.drop_database(db.name)
    await client.close()


async def test_a_reservation_brings_back_only_the_documents_id(
    monitored_usage: tuple[UsageStore, ReplyCapture],
) -> None:
    usage, capture = monitored_usage
    outcomes = [
        await usage.reserve_unit(client_id="c1", month="2026-12", reservation_id=f"r{n}", cap=None, now=n)
        for n in range(20)
    ]
    assert outcomes == [ReserveOutcome.RESERVED] * 20
    assert await usage.units_used(client_id="c1", month="2026-12") == 20
    assert len(capture.find_and_modify_values) == 20
    # Each reply says a document matched (not None), and carries nothing of it but its _id.
    assert all(value is not None and set(value) == {"_id"} for value in capture.find_and_modify_values), (
        capture.find_and_modify_values[-1]
    )
    capture.find_and_modify_values.clear()
    # The reservation's own rules still hold: the same id twice is one unit.
    again = await usage.reserve_unit(client_id="c1", month="2026-12", reservation_id="r3", cap=None, now=99)
    assert again is ReserveOutcome.ALREADY_RESERVED
    # Its retry without upsert matched nothing: that reply carries no document either.
    assert capture.find_and_modify_values[-1] is None
    assert await usage.units_used(client_id="c1", month="2026-12") == 20

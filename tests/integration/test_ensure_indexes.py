"""`ensure_indexes` on the embedded MongoDB (a real wire-protocol server): a restart whose indexes are all there
sends no createIndexes (on that server re-creating them took seconds under load, and each timed-out retry started
over), and an index that is missing or changed is still created."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, monitoring

from services.agentmail_adapter.store import INDEXES as ADAPTER_INDEXES
from services.auth.store import INDEXES as AUTH_INDEXES
from services.billing.store import INDEXES as BILLING_INDEXES
from services.case.store import INDEXES as CASE_INDEXES
from services.webhook.store import INDEXES as WEBHOOK_INDEXES
from shared.mongo import Document, ensure_indexes


class CreateIndexesSent(monitoring.CommandListener):
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "createIndexes":
            self.sent.append([index["name"] for index in event.command["indexes"]])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


Counted = tuple[AsyncMongoClient[Document], CreateIndexesSent]


@pytest.fixture
async def counted(mongo_url: str, subject_prefix: str) -> AsyncIterator[Counted]:
    listener = CreateIndexesSent()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, event_listeners=[listener]
    )
    yield client, listener
    await client.drop_database(f"test_{subject_prefix}")
    await client.close()


async def test_indexes_already_built_are_not_sent_again_and_missing_ones_are(
    counted: Counted, subject_prefix: str
) -> None:
    client, listener = counted
    db = client[f"test_{subject_prefix}"]
    by_owner = IndexModel([("owner", ASCENDING), ("at", DESCENDING)], name="by_owner")
    unique_ref = IndexModel([("ref", ASCENDING)], name="unique_ref", unique=True)
    await ensure_indexes(db, {"things": [by_owner, unique_ref]})
    assert listener.sent == [["by_owner", "unique_ref"]]

    await ensure_indexes(db, {"things": [by_owner, unique_ref]})  # a restart: nothing to build
    assert listener.sent == [["by_owner", "unique_ref"]]

    by_state = IndexModel([("state", ASCENDING)], name="by_state")
    await ensure_indexes(db, {"things": [by_owner, unique_ref, by_state]})  # a new release adds one
    assert listener.sent == [["by_owner", "unique_ref"], ["by_state"]]
    assert set(await db.things.index_information()) == {"_id_", "by_owner", "unique_ref", "by_state"}


@pytest.mark.parametrize(
    "indexes",
    [AUTH_INDEXES, BILLING_INDEXES, CASE_INDEXES, ADAPTER_INDEXES, WEBHOOK_INDEXES],
    ids=["auth", "billing", "case", "agentmail_adapter", "webhook"],
)
async def test_a_service_restarting_on_its_own_indexes_sends_no_create_indexes(
    counted: Counted, subject_prefix: str, indexes: dict[str, list[IndexModel]]
) -> None:
    """Every option of every index the services declare (unique, TTL, partial filters) reads back as built."""
    client, listener = counted
    db = client[f"test_{subject_prefix}"]
    await ensure_indexes(db, indexes)
    assert listener.sent
    listener.sent.clear()
    await ensure_indexes(db, indexes)
    assert listener.sent == []

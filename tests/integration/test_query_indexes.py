"""Every query the stores issue is served by an index they declare (storage conformance for indexes).

The stores' query methods run against the test server with PyMongo's command monitoring on, and each captured
command's filter and sort is checked two ways:

- everywhere (the embedded server here and in CI): some declared index of the collection (or `_id`) has a key
  prefix that matches the query, that is, its leading key is a field the filter constrains (each `$or` branch
  on its own when nothing outside the `$or` is indexed), or, for a query without filter, its leading sort key.
  The embedded server (mongoeco) does not plan queries through indexes, so this is the check that runs here;
- only when TEST_MONGO_URL points at a real MongoDB: `explain()` of the same filter and sort shows an index scan
  and no COLLSCAN in the winning plan (the embedded server has no query planner to ask).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient, IndexModel, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from services.agentmail_adapter import store as agentmail_store
from services.auth import store as auth_store
from services.auth.secrets import SecretCipher
from services.billing import store as billing_store
from services.case import store as case_store
from services.case.store import PageCursor
from services.webhook import store as webhook_store
from shared.mongo import Document, ensure_indexes

DECLARED: Mapping[str, Sequence[IndexModel]] = {
    **case_store.INDEXES,
    **webhook_store.INDEXES,
    **auth_store.INDEXES,
    **billing_store.INDEXES,
    **agentmail_store.INDEXES,
}
# Commands that carry a query, and where their filter and sort are.
_QUERY_COMMANDS = {"find", "update", "delete", "findAndModify", "aggregate", "count", "distinct"}


@dataclass(frozen=True)
class Query:
    collection: str
    command: str
    filter: Mapping[str, Any]
    sort: Mapping[str, Any]


class QueryCapture(monitoring.CommandListener):
    def __init__(self) -> None:
        self.queries: list[Query] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name not in _QUERY_COMMANDS:
            return
        command = event.command
        collection = str(command[name])
        if name == "find":
            self.queries.append(Query(collection, name, command.get("filter", {}), command.get("sort", {})))
        elif name == "findAndModify":
            self.queries.append(Query(collection, name, command.get("query", {}), command.get("sort", {})))
        elif name in ("update", "delete"):
            key = "updates" if name == "update" else "deletes"
            self.queries.extend(Query(collection, name, op.get("q", {}), {}) for op in command.get(key, []))
        elif name == "aggregate":
            pipeline = command.get("pipeline", [])
            first = pipeline[0] if pipeline else {}
            self.queries.append(Query(collection, name, first.get("$match", {}), {}))
        else:
            self.queries.append(Query(collection, name, command.get("query", {}), {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _constrained(query_filter: Mapping[str, Any]) -> set[str]:
    """Top-level fields the filter constrains (`$and` flattened; `$or` left to `_branches`)."""
    fields: set[str] = set()
    for key, value in query_filter.items():
        if key == "$and":
            for part in value:
                fields |= _constrained(part)
        elif not key.startswith("$"):
            fields.add(key)
    return fields


def _leading_keys(collection: str) -> set[str]:
    return {"_id", *(next(iter(model.document["key"])) for model in DECLARED.get(collection, ()))}


def has_index_prefix(query: Query) -> bool:
    leading = _leading_keys(query.collection)
    fields = _constrained(query.filter)
    if fields & leading:
        return True
    branches = query.filter.get("$or")
    if branches:
        return all(_constrained(branch) & leading for branch in branches)
    if not fields and query.sort:
        return next(iter(query.sort)) in leading
    return False


def _stages(plan: Mapping[str, Any]) -> Iterable[str]:
    yield str(plan.get("stage", ""))
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), Mapping):
            yield from _stages(plan[key])
    for child in plan.get("inputStages", []):
        yield from _stages(child)


@pytest.fixture
async def monitored(mongo_url: str) -> AsyncIterator[tuple[AsyncDatabase[Document], QueryCapture]]:
    capture = QueryCapture()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, event_listeners=[capture]
    )
    db = client[f"test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(db, DECLARED, attempts=1)
    capture.queries.clear()
    yield db, capture
    await client.drop_database(db.name)
    await client.close()


async def run_every_store_query(db: AsyncDatabase[Document]) -> None:
    """Each store's query methods once, with every optional filter of the case list in play."""
    now = 1_764_000_000_000
    cases = case_store.CaseStore(db)
    await cases.get("case-1")
    await cases.mark_relayed("case-1", ["msg-1"])
    await cases.unconfirmed_creates(now=now, limit=10)
    await cases.extend_confirmation("case-1", confirm_by=now)
    await cases.case_for_message(thread_id="thread-1", counterparty_address="maya@example.com")
    await cases.count_open_by_status()
    await cases.due_case_ids(now=now, limit=10)
    await cases.needing_attention(now=now, limit=10)
    await cases.with_pending_outbox(older_than=now, limit=10)
    await cases.page(
        client_id="client-1", statuses=[], client_reference_id=None, updated_after=None, after=None, limit=50
    )
    await cases.page(
        client_id="client-1",
        statuses=["RUNNING"],
        client_reference_id="ref-1",
        updated_after=now,
        after=PageCursor(now, "case-1"),
        limit=50,
    )
    keys = case_store.IdempotencyStore(db, ttl=dt.timedelta(hours=24), takeover_grace_ms=1000)
    naive_now = dt.datetime(2026, 12, 1, 12, 0)
    await keys.claim(client_id="client-1", key="k", request_hash="h", case_id="case-1", deadline_ms=now, now=naive_now)
    await keys.claim(client_id="client-1", key="k", request_hash="h", case_id="case-2", deadline_ms=now, now=naive_now)
    await keys.take_over(client_id="client-1", key="k", previous_case_id="case-1", case_id="case-2", deadline_ms=now)
    await keys.abandon(client_id="client-1", key="k", case_id="case-2")
    await case_store.UnmatchedStore(db).newest(limit=10)

    deliveries = webhook_store.DeliveryStore(db)
    await deliveries.claim_due(now=now, lease_ms=1000, claim="claim-1")
    await deliveries.release("event-1", claim="claim-1", next_attempt_at=now)
    await deliveries.for_case(case_id="case-1", client_id="client-1")
    await deliveries.restart_schedule(event_id="event-1", case_id="case-1", client_id="client-1", now=now)

    accounts = auth_store.AuthStore(db, cipher=SecretCipher([Fernet.generate_key().decode()]))
    await accounts.find_client("client-1")
    await accounts.find_api_key("key-1")
    await accounts.find_api_key_by_hash("hash-1")
    await accounts.list_clients()
    await accounts.list_api_keys()

    usage = billing_store.UsageStore(db)
    await usage.reserve_unit(client_id="client-1", month="2026-12", reservation_id="r-1", cap=10, now=now)
    await usage.release_unit(client_id="client-1", month="2026-12", reservation_id="r-1", now=now)
    await usage.units_used(client_id="client-1", month="2026-12")
    await usage.units_used_by_client(month="2026-12")

    mail = agentmail_store.MessageStore(db)
    await mail.find("message-1")
    await mail.sent_for_attempt("case-1", 1)
    await mail.case_of_thread("thread-1")
    await mail.thread("thread-1")
    await mail.thread_size("thread-1")
    await mail.event_handled("event-1")


async def explained_scans(db: AsyncDatabase[Document], queries: Iterable[Query]) -> list[tuple[Query, list[str]]]:
    """The queries whose winning plan on a real MongoDB reads the collection instead of an index."""
    scans: list[tuple[Query, list[str]]] = []
    for query in {(q.collection, repr(q.filter), repr(q.sort)): q for q in queries}.values():
        find: dict[str, Any] = {"find": query.collection, "filter": dict(query.filter)}
        if query.sort:
            find["sort"] = dict(query.sort)
        explained = await db.command({"explain": find, "verbosity": "queryPlanner"})
        stages = list(_stages(explained["queryPlanner"]["winningPlan"]))
        if "COLLSCAN" in stages or not any(stage in ("IXSCAN", "IDHACK", "EXPRESS_IXSCAN") for stage in stages):
            scans.append((query, stages))
    return scans


async def test_every_store_query_is_served_by_a_declared_index(
    monitored: tuple[AsyncDatabase[Document], QueryCapture],
) -> None:
    db, capture = monitored
    await run_every_store_query(db)
    collections = {query.collection for query in capture.queries}
    # The workload reached every collection with a declared index (the check below is not vacuous).
    assert {"cases", "idempotency_keys", "deliveries", "usage", "api_keys", "messages"} <= collections, collections
    unindexed = [query for query in capture.queries if not has_index_prefix(query)]
    assert unindexed == []
    if os.environ.get("TEST_MONGO_URL"):
        # A real MongoDB plans the queries: none may be a collection scan.
        assert await explained_scans(db, capture.queries) == []


def test_the_prefix_check_flags_a_query_no_index_serves() -> None:
    assert not has_index_prefix(Query("cases", "find", {"metadata.vendorId": "v"}, {}))
    assert not has_index_prefix(Query("cases", "find", {}, {"createdAt": 1}))
    # An $or is served only when every branch is.
    assert not has_index_prefix(Query("cases", "find", {"$or": [{"threadIds": "t"}, {"subject": "s"}]}, {}))
    assert has_index_prefix(Query("cases", "find", {"$or": [{"threadIds": "t"}, {"threadId": "t"}]}, {}))
    assert has_index_prefix(Query("cases", "find", {"nextActionAt": {"$lte": 1}, "status": {"$in": ["RUNNING"]}}, {}))

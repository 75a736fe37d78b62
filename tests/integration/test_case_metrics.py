"""The case metrics that read MongoDB or follow a write: what they count, and what they do not read.

The open-cases gauge (`caseflow_cases`) counts open statuses only: finished cases are all of history, and on the
embedded server a count costs one read per matching case while every other command waits behind it. Finished
cases are counted as they finish (`caseflow_cases_finished_total`), once per case, whichever write finished it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from services.case.store import INDEXES, CaseStore
from shared.contracts.case import TERMINAL_STATUSES
from shared.mongo import Document, ensure_indexes
from tests.unit.test_lifecycle import new, running, waiting


class CountCapture(monitoring.CommandListener):
    """The filter of every `count`/`aggregate` command (count_documents is an aggregate) sent on the client."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "aggregate":
            pipeline = event.command.get("pipeline", [])
            self.filters.append(dict(pipeline[0].get("$match", {})) if pipeline else {})
        elif event.command_name == "count":
            self.filters.append(dict(event.command.get("query", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[tuple[CaseStore, CountCapture]]:
    capture = CountCapture()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, event_listeners=[capture]
    )
    db: AsyncDatabase[Document] = client[f"test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(db, INDEXES, attempts=1)
    yield CaseStore(db), capture
    await client.drop_database(db.name)
    await client.close()


def finished(status: str) -> float:
    return REGISTRY.get_sample_value("caseflow_cases_finished_total", {"status": status}) or 0.0


async def test_the_open_cases_gauge_counts_open_statuses_and_never_reads_finished_cases(
    store: tuple[CaseStore, CountCapture],
) -> None:
    cases, capture = store
    await cases.insert(new(case_id="created-1"))
    await cases.insert(running(case_id="running-1"))
    await cases.insert(running(case_id="running-2"))
    await cases.insert(waiting(case_id="waiting-1"))
    for status in sorted(TERMINAL_STATUSES):
        await cases.insert(running(case_id=f"{status.lower()}-1", status=status))
    capture.filters.clear()

    counts = await cases.count_open_by_status()

    assert counts == {"CREATED": 1, "RUNNING": 2, "INPUT_NEEDED": 1}
    counted = {str(query.get("status")) for query in capture.filters}
    assert counted == {"CREATED", "RUNNING", "INPUT_NEEDED"}
    assert len(capture.filters) == 3


async def test_a_case_that_finishes_is_counted_once_by_the_write_that_finished_it(
    store: tuple[CaseStore, CountCapture],
) -> None:
    cases, _ = store
    await cases.insert(running(case_id="to-cancel"))
    before = finished("CANCELLED")

    written = await cases.write_change("to-cancel", lambda case: msgspec.structs.replace(case, status="CANCELLED"))
    assert written is not None
    assert written[1].status == "CANCELLED"
    assert finished("CANCELLED") == before + 1

    # A later change to the finished case (a late outbox relay, a note) finishes nothing again.
    later = await cases.write_change("to-cancel", lambda case: msgspec.structs.replace(case, attempt_count=9))
    assert later is not None
    assert later[1].attempt_count == 9
    # A change that changes nothing writes nothing and counts nothing.
    await cases.write_change("to-cancel", lambda case: case)
    assert finished("CANCELLED") == before + 1

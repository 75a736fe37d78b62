"""The case metrics that read MongoDB or follow a write: what they count, and what they do not read.

The open-cases gauge (`caseflow_cases`) counts open statuses only: finished cases are all of history, and on the
embedded server a count costs one read per matching case while every other command waits behind it. Finished
cases are counted as they finish (`caseflow_cases_finished_total`), once per case, whichever write finished it.
"""

from __future__ import annotations

import msgspec
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from services.case.store import CaseStore
from shared.contracts.case import TERMINAL_STATUSES
from shared.mongo import Document
from tests.integration import test_query_indexes
from tests.integration.test_query_indexes import QueryCapture
from tests.unit.test_lifecycle import new, running, waiting

# test_query_indexes's fixture, used here by name: a database with every declared index, its commands captured.
monitored = test_query_indexes.monitored
Monitored = tuple[AsyncDatabase[Document], QueryCapture]


def finished(status: str) -> float:
    return REGISTRY.get_sample_value("caseflow_cases_finished_total", {"status": status}) or 0.0


async def test_the_open_cases_gauge_counts_open_statuses_and_never_reads_finished_cases(monitored: Monitored) -> None:
    db, capture = monitored
    cases = CaseStore(db)
    await cases.insert(new(case_id="created-1"))
    await cases.insert(running(case_id="running-1"))
    await cases.insert(running(case_id="running-2"))
    await cases.insert(waiting(case_id="waiting-1"))
    for status in sorted(TERMINAL_STATUSES):
        await cases.insert(running(case_id=f"{status.lower()}-1", status=status))
    capture.queries.clear()

    counts = await cases.count_open_by_status()

    assert counts == {"CREATED": 1, "RUNNING": 2, "INPUT_NEEDED": 1}
    # count_documents is an aggregate whose $match is the filter: one per open status, none other.
    assert sorted(str(query.filter.get("status")) for query in capture.queries) == [
        "CREATED",
        "INPUT_NEEDED",
        "RUNNING",
    ]


async def test_a_case_that_finishes_is_counted_once_by_the_write_that_finished_it(monitored: Monitored) -> None:
    cases = CaseStore(monitored[0])
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

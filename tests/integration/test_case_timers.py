"""Case timers on JetStream message schedules (services/case/timers.py), on a real nats-server and MongoDB.

What is shown: a follow-up fires from its case's timer with no scan of the cases at all; a stale timer changes
nothing; a case whose timer was lost is found by the safety round (one query); and the scheduler's loop, with
timers on, runs that round only at start-up and then every SCHEDULER_SAFETY_SCAN_SECONDS (counted calls).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer
from services.case import domain
from services.case.lifecycle import due_at
from services.case.timers import TimerFired
from shared.clock import now_ms
from shared.mongo import Document
from shared.subjects import CASE_TIMERS, Consumer, timer_due_subject
from tests.support.case_service import CLIENT, CaseHarness, new_case_body, timed_case_service
from tests.support.counting import CountedCalls

VENDOR = "vendor@example.com"


@pytest.fixture(scope="module")
def nats(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(log_dir=log_dir, store_dir=tmp_path_factory.mktemp("case_timers_jetstream"))
    server.log_path = log_dir / "nats_case_timers.log"
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def timed(nats: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]) -> AsyncIterator[CaseHarness]:
    """One follow-up hour is one second; timers on."""
    async with timed_case_service(nats.url, mongo_url, mongo_db, FOLLOW_UP_HOUR_SECONDS="1") as running:
        yield running


async def test_a_follow_up_fires_from_its_timer_without_any_scan(timed: CaseHarness) -> None:
    scans = CountedCalls(timed.store, "due_case_ids")
    case_id = await timed.running(VENDOR, followUpDelayHours=1)
    first = await timed.case(case_id)
    armed_for = due_at(first)
    assert armed_for is not None
    assert armed_for == first.next_action_at
    # The timer the first email's write armed is on the stream, for the case's due time.
    stored = await timed.broker.connection.jetstream().get_last_msg(CASE_TIMERS.name, f"case.timer.at.{case_id}")
    assert msgspec.json.decode(stored.data or b"", type=TimerFired) == TimerFired(case_id=case_id, due_at=armed_for)
    followed = await timed.until(case_id, lambda record: record.attempt_count == 2)
    assert followed.status == "RUNNING"
    assert timed.adapter.attempts(case_id) == [1, 2]
    # Nothing looked through the cases: the follow-up came from the timer alone.
    assert scans.calls == 0


async def test_a_stale_timer_changes_nothing(timed: CaseHarness) -> None:
    case_id = await timed.running(VENDOR, followUpDelayHours=3600)
    before = await timed.case(case_id)
    # A timer fired for a time the case no longer has (it was rescheduled later): the case is not due yet.
    assert await timed.worker.claim_due(case_id) == 0
    js = timed.broker.connection.jetstream()
    fired = await js.publish(
        timer_due_subject(case_id),
        msgspec.json.encode(TimerFired(case_id=case_id, due_at=now_ms())),
        stream=CASE_TIMERS.name,
    )
    # Once the timer consumer has acknowledged the fired timer, it has been handled.
    for _ in range(300):
        if (await js.consumer_info(CASE_TIMERS.name, Consumer.CASE_TIMERS)).ack_floor.stream_seq >= fired.seq:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the fired timer was never acknowledged")
    after = await timed.case(case_id)
    assert (after.version, after.attempt_count, after.next_action_at) == (
        before.version,
        before.attempt_count,
        before.next_action_at,
    )


async def test_a_case_whose_timer_was_lost_is_found_by_the_safety_scan(timed: CaseHarness) -> None:
    case_id = await timed.running(VENDOR, followUpDelayHours=3600)
    # The timer is lost (as if the process died between the write and the arm): only the case says it is due.
    await timed.broker.connection.jetstream().purge_stream(CASE_TIMERS.name)
    await timed.store.cases.update_one({"_id": case_id}, {"$set": {"nextActionAt": now_ms() - 1}})
    assert await timed.worker.run_due() == 1
    followed = await timed.until(case_id, lambda record: record.attempt_count == 2)
    assert timed.adapter.attempts(case_id) == [1, 2]
    assert followed.status == "RUNNING"


async def test_the_safety_round_finds_a_due_case_and_an_unconfirmed_create_in_one_query(timed: CaseHarness) -> None:
    """Lost timers: one query of the cases finds both the case due for its follow-up and the create nobody
    confirmed by its confirmation time; no scan of its own runs for either."""
    due_id = await timed.running(VENDOR, followUpDelayHours=3600)
    await timed.broker.connection.jetstream().purge_stream(CASE_TIMERS.name)
    await timed.store.cases.update_one({"_id": due_id}, {"$set": {"nextActionAt": now_ms() - 1}})
    unconfirmed = domain.new_case(
        case_id="never-confirmed", client_id=CLIENT, body=new_case_body(VENDOR), now=now_ms(), confirm_by=now_ms() - 1
    )
    await timed.store.insert(unconfirmed)
    queries = CountedCalls(timed.store, "needing_attention")
    scans = CountedCalls(timed.store, "due_case_ids")
    creates = CountedCalls(timed.store, "unconfirmed_creates")
    assert await timed.worker.safety_round() == 2
    assert (queries.calls, scans.calls, creates.calls) == (1, 0, 0)
    assert await timed.store.get("never-confirmed") is None
    followed = await timed.until(due_id, lambda record: record.attempt_count == 2)
    assert followed.status == "RUNNING"


async def test_the_safety_round_leaves_running_cases_and_creates_not_yet_due_alone(timed: CaseHarness) -> None:
    """A running case stores its unset times as null (`repairAt`, `confirmBy`, `outboxPendingSince`), and a
    create awaiting its confirmation has a `confirmBy` still to come: neither is due, nothing is changed, and
    the create is not removed (it was, on the embedded server, before its queries excluded null times)."""
    running_id = await timed.running(VENDOR, followUpDelayHours=3600)
    waiting = domain.new_case(
        case_id="still-confirmable",
        client_id=CLIENT,
        body=new_case_body(VENDOR),
        now=now_ms(),
        confirm_by=now_ms() + 600_000,
    )
    await timed.store.insert(waiting)
    now = now_ms()
    assert await timed.store.needing_attention(now=now, limit=200) == []
    assert await timed.store.due_case_ids(now=now, limit=200) == []
    assert await timed.store.with_pending_outbox(older_than=now, limit=100) == []
    before = await timed.case(running_id)
    assert await timed.worker.safety_round() == 0
    assert await timed.worker.reconcile_creates() == 0
    assert await timed.store.get("still-confirmable") is not None
    assert (await timed.case(running_id)).version == before.version


async def test_with_timers_the_loop_runs_its_safety_round_at_start_up_and_then_only_every_safety_interval(
    nats: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]
) -> None:
    """With timers on, each case and each create has its own timer: the loop queries the cases once at start-up
    (one query for due cases, passed leases and unconfirmed creates) and then every SCHEDULER_SAFETY_SCAN_SECONDS,
    never on SCHEDULER_INTERVAL_SECONDS."""
    settings = {
        "SCHEDULER_INTERVAL_SECONDS": "0.01",
        "CREATE_CONFIRM_GRACE_SECONDS": "0.04",
        "SCHEDULER_SAFETY_SCAN_SECONDS": "3600",
    }
    async with timed_case_service(nats.url, mongo_url, mongo_db, **settings) as running:
        rounds = CountedCalls(running.store, "needing_attention")
        scans = CountedCalls(running.store, "due_case_ids")
        creates = CountedCalls(running.store, "unconfirmed_creates")
        loop = asyncio.create_task(running.worker.schedule_forever())
        try:
            await asyncio.wait_for(rounds.at_least(1), timeout=30)
            # Dozens of 10 ms intervals (a loaded machine only gives fewer, which cannot make this fail wrongly).
            await asyncio.sleep(0.5)
            assert (rounds.calls, scans.calls, creates.calls) == (1, 0, 0)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

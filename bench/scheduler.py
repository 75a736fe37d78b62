"""Scheduler scan: 100 000 scheduled cases, some due; how long the case service takes to find and claim them, and
what its scheduler costs while nothing is due (timers armed on JetStream, the safety scan behind them).

Key design decision: the scan and the claims run in this process with the case service's own code
(`CaseStore.due_case_ids`, `Worker.run_due`, the lifecycle's `transition`, `OutboxRelay`) against a real
embedded MongoDB server over the wire and a real nats-server, rather than inside a case-service process:
that times the find and the claims separately (a process only shows the sum) and keeps the stack's own
scheduler from racing the measurement. The server is `bench.scheduler_server` (mongoeco's memory engine, the
embedded default), which writes the 100 000 documents in-process before it listens, because over the wire
every single-document insert costs O(collection size) in mongoeco, which would take hours; that setup time
is reported apart. The idle phase arms every scheduled case's timer (services/case/timers.py) on the real
nats-server, then runs the worker's own `schedule_forever` and the outbox relay for IDLE_WINDOW_S seconds: its CPU
per second is the idle share of a core, to which the summary adds one safety scan per SCHEDULER_SAFETY_SCAN_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.cpu import CpuMeter
from bench.report import Phase, Scenario, phase_of
from bench.runner import new_case_body
from bench.stats import summarise
from deploy.processes import ManagedProcess, NatsServer, free_port, wait_for_port
from services.case import domain
from services.case.agent.rules import RulesAgent
from services.case.lifecycle import Timing, due_at
from services.case.model import CaseRecord, from_document, to_document
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore, UnmatchedStore
from services.case.timers import CaseTimers
from services.case.worker import EventFor, Worker
from shared.clock import now_ms
from shared.contracts.case import NOTHING_SCHEDULED, NewCase
from shared.messaging.broker import create_broker
from shared.messaging.connection import connect_with_retry
from shared.messaging.jetstream import ensure_streams
from shared.mongo import create_mongo_client
from shared.settings import CaseSettings
from shared.subjects import CASE_COMMANDS, CASE_EVENTS, CASE_TIMERS, Service

SCHEDULER_DB = "caseflow_scheduler"
HOUR_MS = 3_600_000
BATCH = 5000
# Length of the idle phase's window (seconds), and how many timers are armed at once while setting it up.
IDLE_WINDOW_S = 10
ARM_CONCURRENCY = 500


def scheduled_documents(*, count: int, due: int, now: int, body: NewCase, seed: int = 7) -> list[dict[str, Any]]:
    """`count` case documents: `due` RUNNING cases whose follow-up time has passed (within the last hour),
    10 % finished (nothing scheduled), the rest RUNNING with a follow-up between 1 and 72 hours from `now`."""
    rng = random.Random(seed)  # noqa: S311 (reproducible test data)
    template = domain.new_case(case_id="template", client_id="bench-scheduler", body=body, now=now - 72 * HOUR_MS)
    running = msgspec.structs.replace(
        template,
        status="RUNNING",
        attempt_count=1,
        pending_create=False,
        outbox=[],
        outbox_pending_since=None,
        thread_id="thread-template",
        last_message_id="message-template",
    )
    documents = []
    finished = count // 10
    for index in range(count):
        case_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if index < due:
            status, next_action_at = "RUNNING", now - rng.randrange(1, HOUR_MS)
        elif index < due + finished:
            status, next_action_at = "COMPLETED", NOTHING_SCHEDULED
        else:
            # From an hour on: none falls due while the set is being written and measured.
            status, next_action_at = "RUNNING", now + rng.randrange(HOUR_MS, 72 * HOUR_MS)
        record = msgspec.structs.replace(
            running,
            case_id=case_id,
            status=status,
            next_action_at=next_action_at,
            thread_id=f"thread-{case_id}",
            last_message_id=f"message-{case_id}",
            counterparty_key=f"silent-{index}@sim.example",
        )
        documents.append(to_document(record))
    rng.shuffle(documents)
    return documents


@dataclass
class TimedWorker(Worker):
    """The case worker, timing each claim (load, transition, versioned replace, outbox relay)."""

    claim_ms: list[float] = field(default_factory=list)

    async def apply(self, case_id: str, event_for: EventFor, *, clock: Timing | None = None) -> CaseRecord | None:
        started = time.perf_counter()
        try:
            return await super().apply(case_id, event_for, clock=clock)
        finally:
            self.claim_ms.append((time.perf_counter() - started) * 1000)


class _RoundCounter:
    """Counts the safety rounds the worker's loop runs (`first` is set once the first one, with its claims, ends)."""

    def __init__(self, worker: Worker) -> None:
        self.calls = 0
        self.first = asyncio.Event()
        safety_round = worker.safety_round

        async def counted(*, limit: int = 200) -> int:
            try:
                return await safety_round(limit=limit)
            finally:
                self.calls += 1
                self.first.set()

        worker.safety_round = counted  # type: ignore[method-assign]


async def _arm_every_timer(documents: list[dict[str, Any]], timers: CaseTimers, *, after: int) -> int:
    """Arm the timer of every case due after `after`, as the case writes would have (ARM_CONCURRENCY at once).
    The documents are the ones the server was seeded with (regenerated from the same seed: reading 100 000 back
    over the wire from a loaded embedded server outlives the driver's timeout)."""
    armed = 0
    pending: set[asyncio.Task[None]] = set()
    for document in documents:
        at = due_at(from_document(document))
        if at is None or at <= after:
            continue
        pending.add(asyncio.create_task(timers.arm(str(document["_id"]), at)))
        armed += 1
        if len(pending) >= ARM_CONCURRENCY:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.gather(*pending)
    return armed


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def run_scheduler(
    *,
    cases: int,
    due: int,
    scans: int = 5,
    setup_timeout_s: float = 900.0,
    on_setup: Callable[[str], None] = print,
) -> Scenario:
    scenario = Scenario(
        name=f"scheduler scan ({cases:,} cases)",
        group="scheduler",
        description=(
            f"{cases:,} scheduled cases, {due:,} due: find the due ones (CaseStore.due_case_ids, limit 200) and "
            "claim them all (Worker.run_due until none is due), in-process against the embedded MongoDB server; then "
            "every case's timer armed on JetStream and the scheduler and outbox relay left idle for a window."
        ),
        baseline="baseline: MongoDB find_one",
        context={"cases": cases, "due": due, "batch_limit": 200},
    )
    with tempfile.TemporaryDirectory(prefix="caseflow-bench-scheduler-") as tmp:
        work = Path(tmp)
        now = now_ms()
        port = free_port()
        argv = [sys.executable, "-m", "bench.scheduler_server", "--port", str(port)]
        argv += ["--cases", str(cases), "--due", str(due), "--now", str(now)]
        mongo_server = ManagedProcess("scheduler_mongodb", argv, env=os.environ, log_dir=work)
        nats_server = NatsServer(log_dir=work, store_dir=work / "jetstream")
        started = time.perf_counter()
        mongo_server.start()
        try:
            assert mongo_server.process is not None
            wait_for_port(port, timeout=setup_timeout_s, process=mongo_server.process)
            scenario.setup_s = round(time.perf_counter() - started, 1)
            on_setup(f"scheduler: {cases:,} cases written into the embedded server in {scenario.setup_s} s")
            nats_server.start()
            assert nats_server.process is not None
            mongo_url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            meter = CpuMeter({"mongodb": mongo_server.process.pid, "nats": nats_server.process.pid})
            # A measurement, not a service: a scan on a loaded machine may take longer than a request may wait.
            settings = CaseSettings(
                nats_url=nats_server.url, mongo_url=mongo_url, mongo_db=SCHEDULER_DB, mongo_timeout_seconds=120.0
            )
            broker = create_broker(settings, Service.CASE)
            mongo = create_mongo_client(settings, app_name="bench-scheduler")
            store = CaseStore(mongo[SCHEDULER_DB])
            worker = TimedWorker(
                broker=broker,
                store=store,
                relay=OutboxRelay(broker, store),
                agent=RulesAgent(),
                settings=settings,
                unmatched=UnmatchedStore(mongo[SCHEDULER_DB]),
            )
            try:
                await connect_with_retry(broker)
                await ensure_streams(broker, (CASE_COMMANDS, CASE_EVENTS, CASE_TIMERS), replicas=1)
                # Connection set-up and the driver's handshake belong to no phase.
                await store.cases.find_one({"_id": "warm-up"})

                async def measure(mode: str, offered: str, action: Callable[[], Any]) -> Phase:
                    before, own = meter.snapshot(), _self_cpu()
                    load = await action()
                    cpu = {**CpuMeter.delta(before, meter.snapshot()), "bench (case code)": round(_self_cpu() - own, 3)}
                    return phase_of(mode, offered, load, cpu, accounted=list(cpu))

                async def scan_load() -> Any:
                    latencies, found = [], 0
                    begun = time.perf_counter()
                    for _ in range(scans):
                        t0 = time.perf_counter()
                        found = len(await store.due_case_ids(now=now_ms(), limit=200))
                        latencies.append((time.perf_counter() - t0) * 1000)
                    scenario.context.setdefault("found_per_scan", found)
                    return summarise(latencies, failed=0, duration_s=time.perf_counter() - begun)

                async def safety_round_load() -> Any:
                    """The query of the safety round behind the timers: due, past a lease, or unconfirmed."""
                    latencies = []
                    begun = time.perf_counter()
                    for _ in range(scans):
                        t0 = time.perf_counter()
                        await store.needing_attention(now=now_ms(), limit=200)
                        latencies.append((time.perf_counter() - t0) * 1000)
                    return summarise(latencies, failed=0, duration_s=time.perf_counter() - begun)

                async def claim_load() -> Any:
                    claimed, rounds = 0, 0
                    begun = time.perf_counter()
                    while True:
                        changed = await worker.run_due()
                        rounds += 1
                        claimed += changed
                        if changed == 0:
                            break
                    scenario.context["claimed"] = claimed
                    scenario.context["run_due_rounds"] = rounds
                    return summarise(worker.claim_ms, failed=0, duration_s=time.perf_counter() - begun)

                scenario.phases.append(await measure("scan", f"{scans} scans, {due:,} due", scan_load))
                scenario.phases.append(await measure("claim", f"{due:,} due cases", claim_load))
                scenario.phases.append(await measure("idle scan", f"{scans} scans, none due", scan_load))
                scenario.phases.append(
                    await measure("idle safety round", f"{scans} rounds, none due", safety_round_load)
                )
                scenario.context["still_due"] = len(await store.due_case_ids(now=now_ms(), limit=200))

                armed_at = time.perf_counter()
                seeded = scheduled_documents(
                    count=cases, due=due, now=now, body=msgspec.convert(new_case_body("scheduler"), NewCase)
                )
                scenario.context["timers_armed"] = await _arm_every_timer(seeded, CaseTimers(broker), after=now)
                del seeded
                scenario.context["timers_arm_s"] = round(time.perf_counter() - armed_at, 1)
                scan_counter = _RoundCounter(worker)
                worker.timers = CaseTimers(broker)
                loops = [asyncio.create_task(worker.schedule_forever())]
                try:
                    # The loop's start-up safety round (cases scheduled before timers existed), measured above as the
                    # idle safety round; the window starts once it is done.
                    await asyncio.wait_for(scan_counter.first.wait(), timeout=setup_timeout_s)

                    async def idle_load() -> Any:
                        begun = time.perf_counter()
                        await asyncio.sleep(IDLE_WINDOW_S)
                        # One "request" per second of the window: CPU per request is CPU per second (share of a core).
                        return summarise([1000.0] * IDLE_WINDOW_S, failed=0, duration_s=time.perf_counter() - begun)

                    window_scans = scan_counter.calls
                    # The scheduler alone (its loop ticking, its scans due only every safety interval; the timers on
                    # nats-server), then with the case service's other timed loop, the outbox relay, which also
                    # queries `cases` each second.
                    scenario.phases.append(
                        await measure("idle", f"{IDLE_WINDOW_S} s, timers armed, none due", idle_load)
                    )
                    scenario.context["idle_window_scans"] = scan_counter.calls - window_scans
                    loops.append(asyncio.create_task(worker.relay.relay_forever()))
                    scenario.phases.append(
                        await measure("idle + outbox relay", f"{IDLE_WINDOW_S} s, the relay polling too", idle_load)
                    )
                finally:
                    for loop in loops:
                        loop.cancel()
                    for loop in loops:
                        with contextlib.suppress(asyncio.CancelledError):
                            await loop
                scenario.context["safety_scan_seconds"] = settings.scheduler_safety_scan_seconds
            finally:
                with contextlib.suppress(Exception):
                    await broker.stop()
                await mongo.close()
        finally:
            nats_server.stop()
            mongo_server.stop()
    scenario.notes.append(
        "claim: latencies are per case (Worker.apply: load, transition, version-checked replace, relay publish "
        "and outbox cleanup); throughput is claimed cases per second, scans included."
    )
    return scenario

"""Scheduler scan: 100 000 scheduled cases, some due; how long the case service takes to find and claim them.

Key design decision: the scan and the claims run in this process with the case service's own code
(`CaseStore.due_case_ids`, `Worker.run_due`, the lifecycle's `transition`, `OutboxRelay`) against a real
embedded MongoDB server over the wire and a real nats-server, rather than inside a case-service process:
that times the find and the claims separately (a process only shows the sum) and keeps the stack's own
scheduler from racing the measurement. The server is `bench.scheduler_server` (mongoeco's memory engine, the
embedded default), which writes the 100 000 documents in-process before it listens, because over the wire
every single-document insert costs O(collection size) in mongoeco, which would take hours; that setup time
is reported apart.
"""

from __future__ import annotations

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
from bench.stats import summarise
from deploy.processes import ManagedProcess, NatsServer, free_port, wait_for_port
from services.case import domain
from services.case.agent.rules import RulesAgent
from services.case.lifecycle import Clock
from services.case.model import CaseRecord, to_document
from services.case.outbox import OutboxRelay
from services.case.store import CaseStore, UnmatchedStore
from services.case.worker import EventFor, Worker
from shared.clock import now_ms
from shared.contracts.case import NOTHING_SCHEDULED, NewCase
from shared.messaging.broker import create_broker
from shared.messaging.connection import connect_with_retry
from shared.messaging.jetstream import ensure_streams
from shared.mongo import create_mongo_client
from shared.settings import CaseSettings
from shared.subjects import CASE_COMMANDS, CASE_EVENTS, Service

SCHEDULER_DB = "caseflow_scheduler"
HOUR_MS = 3_600_000
BATCH = 5000


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

    async def apply(self, case_id: str, event_for: EventFor, *, clock: Clock | None = None) -> CaseRecord | None:
        started = time.perf_counter()
        try:
            return await super().apply(case_id, event_for, clock=clock)
        finally:
            self.claim_ms.append((time.perf_counter() - started) * 1000)


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
            "claim them all (Worker.run_due until none is due), in-process against the embedded MongoDB server."
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
            settings = CaseSettings(nats_url=nats_server.url, mongo_url=mongo_url, mongo_db=SCHEDULER_DB)
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
                await ensure_streams(broker, (CASE_COMMANDS, CASE_EVENTS), replicas=1)
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
                scenario.context["still_due"] = len(await store.due_case_ids(now=now_ms(), limit=200))
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

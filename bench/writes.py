"""How many MongoDB writes a case needs up to its first email, counted by the server (`serverStatus` opcounters).

Key design decision: the count runs on a small stack of its own, after the timed scenarios, where the AgentMail
simulator's delivery events are pushed out of the window (`AGENTMAIL_SIM_EVENT_DELAY_SECONDS`), so what follows a
first email (its delivery webhook) is not counted; and the created-command consumer is paused while the creates
are answered, which splits the count into the request path and the pipeline after it. The writes the stack makes
on its own (background loops) are measured over an idle window first and taken off, so the figure is per case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx

from bench.hold import pause, resume
from bench.report import Scenario
from bench.runner import Runner, new_case_body, setup_client
from shared.subjects import CASE_COMMANDS, Consumer

# The opcounters a write moves. mongoeco counts one per insert_one/update_one/replace_one/find_one_and_update/
# delete_one statement, matched or not (a version-checked update that loses still costs the server its work), one
# per document of an insert_many, and one per document changed by an update_many.
WRITE_COUNTERS: Final = ("insert", "update", "delete")
# No delivery event within the count (the stack is gone long before an hour).
COUNT_STACK_ENV: Final = {"AGENTMAIL_SIM_EVENT_DELAY_SECONDS": "3600"}
IDLE_WINDOW_S: Final = 5.0


def writes_between(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """Documents written between two `serverStatus` opcounters snapshots."""
    return sum(int(after.get(name, 0)) - int(before.get(name, 0)) for name in WRITE_COUNTERS)


def per_case(writes: int, *, background_per_s: float, window_s: float, cases: int) -> float | None:
    """Writes per case in a window, less what the stack writes on its own in a window that long."""
    if cases <= 0:
        return None
    return round(max(0.0, writes - background_per_s * window_s) / cases, 2)


async def opcounters(mongo_url: str) -> dict[str, int]:
    mongo = setup_client(mongo_url)
    try:
        status = await mongo.admin.command("serverStatus")
        return {name: int(value) for name, value in status["opcounters"].items()}
    finally:
        await mongo.close()


async def _create(gateway_url: str, headers: dict[str, str], bodies: list[dict[str, Any]], concurrency: int) -> int:
    queue = list(bodies)
    created = 0
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=60) as api:

        async def creator() -> None:
            nonlocal created
            while queue:
                body = queue.pop()
                key = f"writes-{body['counterparty']['address']}"
                response = await api.post("/cases", json=body, headers={"Idempotency-Key": key})
                created += response.status_code == 201

        await asyncio.gather(*(creator() for _ in range(concurrency)))
    return created


def count_writes(runner: Runner, *, cases: int, timeout_s: float) -> Scenario:
    """Create `cases` cases with their outreach held, count the writes; release it, count again up to the last
    first email. Needs the stack's NATS, MongoDB and simulator (a stack of the bench's own)."""
    target = runner.target
    mongo_url, nats_url = target.mongo_url, target.nats_url
    if mongo_url is None or nats_url is None or target.simulator_url is None:
        raise RuntimeError("the write count needs the stack's MongoDB, NATS and simulator")
    stream, consumer = CASE_COMMANDS.name, str(Consumer.CASE_CREATED)
    tag = f"writes{runner.run_tag}"
    bodies = [new_case_body(f"{tag}-{index}") for index in range(cases)]
    runner.wait_quiet()

    idle_started, idle_before = time.monotonic(), asyncio.run(opcounters(mongo_url))
    time.sleep(IDLE_WINDOW_S)
    idle_writes = writes_between(idle_before, asyncio.run(opcounters(mongo_url)))
    background_per_s = idle_writes / (time.monotonic() - idle_started)

    asyncio.run(pause(nats_url, stream, consumer, for_at_most_s=timeout_s))
    try:
        request_started, before = time.monotonic(), asyncio.run(opcounters(mongo_url))
        created = asyncio.run(_create(target.gateway_url, target.headers, bodies, concurrency=4))
        # What the requests cause after their answers (an outbox relay) counts for the request path too.
        runner.wait_quiet()
        answered = asyncio.run(opcounters(mongo_url))
        request_window_s = time.monotonic() - request_started
        emails_while_held = runner.emails_to(tag)
    finally:
        held = asyncio.run(resume(nats_url, stream, consumer))
    pipeline_started = time.monotonic()
    deadline = pipeline_started + timeout_s
    emails = runner.emails_to(tag)
    while emails < created and time.monotonic() < deadline:
        time.sleep(0.5)
        emails = runner.emails_to(tag)
    runner.wait_quiet()
    emailed = asyncio.run(opcounters(mongo_url))
    pipeline_window_s = time.monotonic() - pipeline_started

    request_writes, pipeline_writes = writes_between(before, answered), writes_between(answered, emailed)
    request_per_case = per_case(
        request_writes, background_per_s=background_per_s, window_s=request_window_s, cases=created
    )
    pipeline_per_case = per_case(
        pipeline_writes, background_per_s=background_per_s, window_s=pipeline_window_s, cases=emails
    )
    total = (
        round(request_per_case + pipeline_per_case, 2)
        if request_per_case is not None and pipeline_per_case is not None and emails == created
        else None
    )
    return Scenario(
        name=f"worker writes: {cases} cases → first email",
        group="worker",
        description="MongoDB writes (serverStatus opcounters insert + update + delete) a case needs up to its "
        "first email, on a stack of its own with no delivery events: the creates answered with the created-"
        "command consumer paused (request path), then released until each first email is in the simulator's "
        "outbox (pipeline); the stack's own background writes over the same time taken off.",
        context={
            "cases": cases,
            "created": created,
            "emails_sent": emails,
            "created_commands_held": held.pending,
            "emails_while_held": emails_while_held,
            "writes_per_case": total,
            "request_path_writes_per_case": request_per_case,
            "pipeline_writes_per_case": pipeline_per_case,
            "request_path_writes": request_writes,
            "pipeline_writes": pipeline_writes,
            "background_writes_per_s": round(background_per_s, 3),
            "windows_s": {
                "idle": IDLE_WINDOW_S,
                "request_path": round(request_window_s, 1),
                "pipeline": round(pipeline_window_s, 1),
            },
        },
    )

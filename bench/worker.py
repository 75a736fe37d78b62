"""Worker throughput: N cases from `POST /cases` to their first email in the AgentMail simulator's outbox.

Key design decision: "sent" is what the simulator received (`GET /_sim/outbox`), not what Caseflow says it
did, and each case's latency runs from its create request to the timestamp the simulator gave its email.
Counterparties are `silent-...@sim.example` (they never answer) with a 72-hour follow-up delay, so every case
costs exactly one email and nothing else is scheduled during the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

import httpx

from bench.stats import LoadResult, summarise


@dataclass(frozen=True)
class WorkerRun:
    created: LoadResult  # the creates, as the API client saw them
    emails: LoadResult  # per case: create request → email in the outbox; throughput = emails per second
    sent: int
    elapsed_s: float


def parse_timestamp(text: str) -> float:
    """Unix seconds from the simulator's RFC 3339 UTC timestamp (`2025-01-01T00:00:00.123Z`)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _outbox(client: httpx.AsyncClient, tag: str) -> list[dict[str, object]]:
    response = await client.get("/_sim/outbox", params={"to": tag})
    response.raise_for_status()
    messages: list[dict[str, object]] = response.json()["messages"]
    return messages


async def run_worker(
    *,
    gateway_url: str,
    simulator_url: str,
    headers: dict[str, str],
    bodies: list[dict[str, object]],
    tag: str,
    concurrency: int,
    timeout_s: float,
) -> WorkerRun:
    """Create every body (addresses must contain `tag` and be unique), then wait for each case's first email."""
    created_at: dict[str, float] = {}
    create_latencies: list[float] = []
    failed = 0
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with (
        httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=60) as api,
        httpx.AsyncClient(base_url=simulator_url, timeout=60) as simulator,
    ):

        async def creator() -> None:
            nonlocal failed
            while not queue.empty():
                body = queue.get_nowait()
                address = str(body["counterparty"]["address"])  # type: ignore[index]
                started = time.time()
                response = await api.post("/cases", json=body, headers={"Idempotency-Key": f"bench-{address}"})
                create_latencies.append((time.time() - started) * 1000)
                if response.status_code == 201:
                    created_at[address.lower()] = started
                else:
                    failed += 1

        started = time.time()
        await asyncio.gather(*(creator() for _ in range(concurrency)))
        created = summarise(create_latencies, failed=failed, duration_s=time.time() - started)
        deadline = time.monotonic() + timeout_s
        messages = await _outbox(simulator, tag)
        while len(messages) < len(created_at) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            messages = await _outbox(simulator, tag)
    first_email: dict[str, float] = {}
    for message in messages:
        to = message["to"]
        assert isinstance(to, list)
        address = str(to[0]).lower()
        sent_at = parse_timestamp(str(message["timestamp"]))
        first_email[address] = min(sent_at, first_email.get(address, sent_at))
    latencies = [(first_email[a] - created_at[a]) * 1000 for a in created_at if a in first_email]
    last = max(first_email.values(), default=started)
    elapsed = max(last - started, 1e-6)
    emails = summarise(latencies, failed=0, duration_s=elapsed)
    return WorkerRun(created=created, emails=emails, sent=len(first_email), elapsed_s=round(elapsed, 3))

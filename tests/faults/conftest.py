"""A stack of its own for fault tests: its NATS and its MongoDB (SQLite file, so a restart keeps the data)
can be stopped, killed and restarted without disturbing any other test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from deploy.processes import EmbeddedMongo, NatsServer, Stack
from simulator.cases import case_body
from tests.support.api import headers, new_client


@dataclass
class FaultStack:
    stack: Stack
    nats: NatsServer
    mongo: EmbeddedMongo

    @property
    def url(self) -> str:
        return self.stack.gateway_url


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    work = tmp_path_factory.mktemp("faults")
    nats = NatsServer(log_dir=work, store_dir=work / "jetstream")
    mongo = EmbeddedMongo(log_dir=work, sqlite_path=work / "mongo" / "caseflow.sqlite")
    (work / "mongo").mkdir()
    nats.start()
    mongo.start()
    stack = Stack(
        log_dir=work,
        nats=nats,
        mongo_url=mongo.url,
        env={
            "MONGO_DB": "caseflow_faults",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RATE_LIMIT_CREATE": "10000/10000",
            "RATE_LIMIT_DEFAULT": "10000/10000",
            # Retry quickly, and never park a message during an outage of a minute or so.
            "CONSUMER_BACKOFF_SECONDS": "0.5,1,2,3",
            "CONSUMER_MAX_DELIVER": "1000",
            "AGENTMAIL_TIMEOUT_SECONDS": "1",
            "AGENTMAIL_MAX_RETRIES": "2",
            "AGENTMAIL_RETRY_BASE_SECONDS": "0.2",
            "AGENTMAIL_RETRY_MAX_SECONDS": "1",
            "SEND_TIMEOUT_SECONDS": "10",
            "RPC_TIMEOUT_SECONDS": "3",
            "MONGO_TIMEOUT_SECONDS": "2",
        },
    )
    stack.start()
    yield FaultStack(stack=stack, nats=nats, mongo=mongo)
    stack.stop()
    mongo.stop()
    nats.stop()


@pytest.fixture
async def api(faults: FaultStack) -> AsyncIterator[httpx.AsyncClient]:
    client = new_client(faults.stack)
    async with httpx.AsyncClient(base_url=faults.url, timeout=30, headers=headers(client["apiKey"])) as http:
        yield http


def silent_case(run: str, index: int) -> dict[str, Any]:
    """A case whose counterparty never answers and whose first follow-up is 72 real hours away."""
    return case_body(counterparty={"address": f"silent.{run}.{index}@sim.example", "name": "Quiet"})


async def create_cases(
    api: httpx.AsyncClient,
    run: str,
    count: int,
    *,
    parallel: int = 4,
    spacing_seconds: float = 0.03,
    retries_after_503: int = 0,
) -> dict[str, str]:
    """Create `count` cases spread over a few seconds; returns {caseId: address} for the ones that got a 201
    (the others got an enveloped 500 or 503, as a client would during a fault). With `retries_after_503`, each
    create carries an Idempotency-Key and a 503 is retried after its Retry-After, as a well-behaved client does."""
    semaphore = asyncio.Semaphore(parallel)
    created: dict[str, str] = {}

    async def one(index: int) -> None:
        await asyncio.sleep(index * spacing_seconds)
        body = silent_case(run, index)
        headers = {"Idempotency-Key": f"{run}-{index}"} if retries_after_503 else {}
        async with semaphore:
            for attempt in range(retries_after_503 + 1):
                try:
                    response = await api.post("/cases", json=body, headers=headers)
                except httpx.HTTPError:
                    return
                if response.status_code != 503 or attempt == retries_after_503:
                    break
                await asyncio.sleep(float(response.headers["retry-after"]))
        if response.status_code == 201:
            created[response.json()["data"]["caseId"]] = body["counterparty"]["address"]
        else:
            assert response.status_code in {500, 503}, response.text
            assert response.json()["ok"] is False

    await asyncio.gather(*(one(i) for i in range(count)))
    return created


async def wait_all_running(api: httpx.AsyncClient, case_ids: set[str], *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = set(case_ids)
    while pending and time.monotonic() < deadline:
        for case_id in list(pending):
            response = await api.get(f"/cases/{case_id}")
            if response.status_code == 200 and response.json()["data"]["status"] == "RUNNING":
                assert response.json()["data"]["attemptCount"] == 1
                pending.discard(case_id)
        if pending:
            await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} accepted cases never reached RUNNING"


async def emails_per_address(faults: FaultStack, run: str) -> dict[str, int]:
    return await emails_to_run(faults.stack.simulator.url, run)


async def emails_to_run(simulator_url: str, run: str) -> dict[str, int]:
    """How many emails the simulator's outbox holds for each address of the run (lower-cased)."""
    async with httpx.AsyncClient(timeout=30) as http:
        outbox = (await http.get(f"{simulator_url}/_sim/outbox", params={"to": f".{run}."})).json()
    counts: dict[str, int] = {}
    for message in outbox["messages"]:
        for address in message["to"]:
            counts[address.lower()] = counts.get(address.lower(), 0) + 1
    return counts


def new_run() -> str:
    return uuid.uuid4().hex[:8]


def wait_ready(faults: FaultStack, *, timeout: float = 60) -> None:
    faults.stack.wait_ready(timeout=timeout)

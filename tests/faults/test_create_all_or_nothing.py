"""A create is all or nothing (docs/api.md): a `POST /cases` answered 5xx, or never answered, emails nobody,
unless a retry with its Idempotency-Key returns that very case. And what the API's requests cost in MongoDB
commands, counted by the services' own command log (MONGO_COMMAND_LOG) per request id.

The stack is this module's own (its NATS, its MongoDB), with short deadlines (RPC_TIMEOUT_SECONDS 2) and a short
confirmation grace (CREATE_CONFIRM_GRACE_SECONDS 15), so "after the deadline" takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import nats as nats_client
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import EmbeddedMongo, ManagedProcess, NatsServer, Stack
from shared.contracts.case import CMD_INPUT_PROVIDED, CMD_SEND
from shared.mongo import Document
from shared.subjects import CASE_COMMANDS
from tests.faults.conftest import FaultStack, emails_per_address, new_run, silent_case, wait_all_running, wait_ready

DB = "caseflow_create_faults"
RPC_TIMEOUT_SECONDS = 2.0
# Longer than a restart of the case service: a keyed retry right after one still finds its case unremoved.
CONFIRM_GRACE_SECONDS = 15.0
WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify"})


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """Overrides the package's stack: the same shape, with this module's deadlines and the command log on."""
    work = tmp_path_factory.mktemp("create-faults")
    nats = NatsServer(log_dir=work, store_dir=work / "jetstream")
    mongo = EmbeddedMongo(log_dir=work)
    nats.start()
    mongo.start()
    stack = Stack(
        log_dir=work,
        nats=nats,
        mongo_url=mongo.url,
        env={
            "MONGO_DB": DB,
            "LOG_LEVEL": "INFO",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RATE_LIMIT_CREATE": "10000/10000",
            "RATE_LIMIT_DEFAULT": "10000/10000",
            "RPC_TIMEOUT_SECONDS": str(RPC_TIMEOUT_SECONDS),
            "CREATE_CONFIRM_GRACE_SECONDS": str(CONFIRM_GRACE_SECONDS),
            "MONGO_COMMAND_LOG": "true",
        },
    )
    stack.start()
    yield FaultStack(stack=stack, nats=nats, mongo=mongo)
    stack.stop()
    mongo.stop()
    nats.stop()


@pytest.fixture
async def db(faults: FaultStack) -> AsyncIterator[AsyncDatabase[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(faults.stack.env["MONGO_URL"])
    yield client[DB]
    await client.close()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.2)


async def used_units(api: httpx.AsyncClient) -> int:
    response = await api.get("/usage")
    assert response.status_code == 200, response.text
    used: int = response.json()["data"]["used"]
    return used


def restart(faults: FaultStack, service: ManagedProcess, **env: str | None) -> None:
    """Restart `service` with `env` changed (None removes a variable) and wait until the stack is ready."""
    service.kill()
    for name, value in env.items():
        if value is None:
            service.env.pop(name, None)
        else:
            service.env[name] = value
    service.start()
    wait_ready(faults)


async def test_creates_answered_503_while_the_case_service_is_blocked_never_email(
    faults: FaultStack, api: httpx.AsyncClient, db: AsyncDatabase[Document]
) -> None:
    run = new_run()
    case_service = faults.stack.services["case"]
    assert case_service.process is not None
    bodies = [silent_case(run, index) for index in range(6)]
    keys = {index: f"blocked-{run}-{index}" for index in range(0, 6, 2)}
    request_ids = [f"blocked-{run}-{index}" for index in range(6)]

    def headers_of(index: int) -> dict[str, str]:
        extra = {"X-Request-Id": request_ids[index]}
        if index in keys:
            extra["Idempotency-Key"] = keys[index]
        return extra

    # A blocked event loop, as one hostile reply caused it: the requests queue at the process meanwhile.
    os.kill(case_service.process.pid, signal.SIGSTOP)
    try:
        answered = await asyncio.gather(
            *(api.post("/cases", json=body, headers=headers_of(index)) for index, body in enumerate(bodies))
        )
    finally:
        os.kill(case_service.process.pid, signal.SIGCONT)
    assert [response.status_code for response in answered] == [503] * 6
    assert {response.json()["error"]["code"] for response in answered} == {"SERVICE_UNAVAILABLE"}

    # Unblocked, the case service finds each queued create past its deadline and drops it before storing anything
    # (before its handler runs, in the shared middleware, or in the create itself if the deadline passes there).
    def dropped() -> set[str]:
        return {
            str(entry.get("request_id"))
            for entry in case_service.json_log_lines()
            if str(entry.get("msg", "")).startswith(
                ("create dropped: its deadline passed", "request dropped: its deadline had passed")
            )
        }

    async def all_dropped() -> bool:
        return set(request_ids) <= dropped()

    await eventually(all_dropped, what="every queued create dropped")
    addresses = [body["counterparty"]["address"] for body in bodies]
    assert await db.cases.count_documents({"counterparty.address": {"$in": addresses}}) == 0
    assert await db.idempotency_keys.count_documents({"_id": {"$regex": f"blocked-{run}-"}}) == 0
    assert await used_units(api) == 0

    # A retry with its key now creates the case (nothing holds the key), and only those cases ever email.
    retried = {
        index: await api.post("/cases", json=bodies[index], headers={"Idempotency-Key": key})
        for index, key in keys.items()
    }
    assert {index: response.status_code for index, response in retried.items()} == dict.fromkeys(keys, 201)
    await wait_all_running(api, {response.json()["data"]["caseId"] for response in retried.values()})
    emails = await emails_per_address(faults, run)
    assert emails == {addresses[index].lower(): 1 for index in keys}


async def test_a_case_service_killed_after_storing_a_case_emails_only_the_case_a_keyed_retry_returns(
    faults: FaultStack, api: httpx.AsyncClient, db: AsyncDatabase[Document]
) -> None:
    run = new_run()
    case_service = faults.stack.services["case"]
    keyed, bare = silent_case(run, 0), silent_case(run, 1)
    key = {"Idempotency-Key": f"killed-{run}"}
    restart(faults, case_service, FAULT_EXIT_AFTER_CASE_INSERT="true")
    try:
        first = await api.post("/cases", json=bare, headers={"X-Request-Id": f"bare-{run}"})
        assert first.status_code == 503, first.text
        assert case_service.process is not None
        assert case_service.process.wait(10) == -signal.SIGKILL
        restart(faults, case_service)
        second = await api.post("/cases", json=keyed, headers={**key, "X-Request-Id": f"keyed-{run}"})
        assert second.status_code == 503, second.text
        assert case_service.process.wait(10) == -signal.SIGKILL
    finally:
        restart(faults, case_service, FAULT_EXIT_AFTER_CASE_INSERT=None)

    # Both were stored, each just before its process died.
    stored = {
        str(entry.get("request_id")): str(entry.get("case_id"))
        for entry in case_service.json_log_lines()
        if entry.get("msg") == "case stored; it starts once the create is confirmed"
    }
    bare_id, keyed_id = stored[f"bare-{run}"], stored[f"keyed-{run}"]

    # With its key, the retry returns that very case, and it starts (one email).
    retry = await api.post("/cases", json=keyed, headers=key)
    assert retry.status_code == 201, retry.text
    assert retry.json()["data"]["caseId"] == keyed_id
    assert retry.headers["idempotent-replayed"] == "true"
    await wait_all_running(api, {keyed_id})

    # Without one, nobody confirms the case: past its deadline and grace the reconciler removes it, and its unit.
    async def removed() -> bool:
        return await db.cases.find_one({"_id": bare_id}) is None

    await eventually(removed, timeout=CONFIRM_GRACE_SECONDS + 30, what="the unconfirmed case removed")
    assert (await api.get(f"/cases/{bare_id}")).status_code == 404
    assert await used_units(api) == 1
    removals = [
        entry
        for entry in case_service.json_log_lines()
        if entry.get("msg") == "removed a create that was never confirmed; its usage unit is released"
    ]
    assert [entry.get("case_id") for entry in removals] == [bare_id]
    emails = await emails_per_address(faults, run)
    assert emails == {keyed["counterparty"]["address"].lower(): 1}


async def test_a_create_whose_confirmation_cannot_be_published_is_503_and_never_emails(
    faults: FaultStack, api: httpx.AsyncClient, db: AsyncDatabase[Document]
) -> None:
    run = new_run()
    body = silent_case(run, 0)
    nats = await nats_client.connect(faults.nats.url)
    js = nats.jetstream()
    config = (await js.stream_info(CASE_COMMANDS.name)).config
    # JetStream refuses the gateway's publish while the stream does not take created commands (the case RPC works).
    await js.update_stream(replace(config, subjects=[CMD_SEND, CMD_INPUT_PROVIDED]))
    try:
        refused = await api.post("/cases", json=body, headers={"X-Request-Id": f"unpublished-{run}"})
    finally:
        await js.update_stream(config)
        await nats.close()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    gateway_log = faults.stack.services["gateway"].json_log_lines()
    assert any(entry.get("msg") == "could not confirm a create; answering 503" for entry in gateway_log)
    stored = [
        str(entry.get("case_id"))
        for entry in faults.stack.services["case"].json_log_lines()
        if entry.get("msg") == "case stored; it starts once the create is confirmed"
        and entry.get("request_id") == f"unpublished-{run}"
    ]
    assert len(stored) == 1, "the case service stored the case; only its confirmation failed"

    async def removed() -> bool:
        return await db.cases.find_one({"_id": stored[0]}) is None

    await eventually(removed, timeout=CONFIRM_GRACE_SECONDS + 30, what="the unconfirmed case removed")
    assert await used_units(api) == 0
    assert await emails_per_address(faults, run) == {}


# ---- what each request costs in MongoDB commands -------------------------------------------------------------


# The RPCs a request of the cases API is answered through (the gateway asks case and auth, case asks billing).
# The durable commands a request causes carry its request id too (the worker starting the case, judging an
# input, and the adapter RPCs they make): that is the pipeline after the answer, not the request's cost.
REQUEST_PATH_SUBJECTS = ("case.rpc.", "billing.rpc.", "auth.rpc.")


def commands_of(stack: Stack, request_id: str) -> list[str]:
    """The MongoDB commands the services issued while answering the RPCs of one HTTP request, as
    `collection.command`."""
    return sorted(
        f"{entry.get('collection')}.{entry.get('mongo_command')}"
        for service in stack.services.values()
        for entry in service.json_log_lines()
        if entry.get("msg") == "mongo command"
        and entry.get("request_id") == request_id
        and str(entry.get("handling")).startswith(REQUEST_PATH_SUBJECTS)
    )


def writes(commands: list[str]) -> list[str]:
    return [command for command in commands if command.rsplit(".", 1)[1] in WRITE_COMMANDS]


async def counted(
    faults: FaultStack, api: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[str]]:
    request_id = f"count-{uuid.uuid4().hex[:12]}"
    extra = {**kwargs.pop("headers", {}), "X-Request-Id": request_id}
    response = await api.request(method, url, headers=extra, **kwargs)
    assert response.headers["x-request-id"] == request_id
    return response, commands_of(faults.stack, request_id)


async def test_what_each_request_costs_in_mongodb_commands(
    faults: FaultStack, api: httpx.AsyncClient, db: AsyncDatabase[Document]
) -> None:
    run = new_run()
    await used_units(api)  # the API key is verified (and cached) once, outside the counted requests

    created, commands = await counted(faults, api, "POST", "/cases", json=silent_case(run, 0))
    assert created.status_code == 201, created.text
    assert commands == ["cases.insert", "usage.findAndModify"]
    assert len(writes(commands)) == 2

    keyed, commands = await counted(
        faults, api, "POST", "/cases", json=silent_case(run, 1), headers={"Idempotency-Key": f"count-{run}"}
    )
    assert keyed.status_code == 201, keyed.text
    assert commands == ["cases.insert", "idempotency_keys.insert", "usage.findAndModify"]
    assert len(writes(commands)) == 3

    case_id = created.json()["data"]["caseId"]
    read, commands = await counted(faults, api, "GET", f"/cases/{case_id}")
    assert read.status_code == 200
    assert commands == ["cases.find"]

    listed, commands = await counted(faults, api, "GET", "/cases?limit=50")
    assert listed.status_code == 200
    assert len(listed.json()["data"]["items"]) >= 2
    assert commands == ["cases.find"]

    await wait_all_running(api, {case_id})
    await waiting_for_input(db, case_id, "req-count")
    answered, commands = await counted(
        faults,
        api,
        "POST",
        f"/cases/{case_id}/input",
        json={"inputRequestId": "req-count", "providedContext": "A PDF signed electronically is fine."},
    )
    assert answered.status_code == 202, answered.text
    # Read the case, write it with the owed command in its outbox, then drop the relayed command from the outbox.
    assert commands == ["cases.find", "cases.update", "cases.update", "cases.update"]
    assert len(writes(commands)) == 3


async def waiting_for_input(db: AsyncDatabase[Document], case_id: str, input_request_id: str) -> None:
    """Put a RUNNING case into INPUT_NEEDED with a pending request, as the worker would (a fixture write)."""
    result = await db.cases.update_one(
        {"_id": case_id, "status": "RUNNING", "awaitingSend": None},
        {
            "$set": {
                "status": "INPUT_NEEDED",
                "inputRequest": {
                    "id": input_request_id,
                    "question": "Is a PDF signed electronically acceptable?",
                    "status": "PENDING",
                    "requestedAt": 1_774_131_900_300,
                },
            },
            "$inc": {"version": 1},
        },
    )
    assert result.modified_count == 1

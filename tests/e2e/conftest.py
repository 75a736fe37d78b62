from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer, Stack
from shared.mongo import Document
from shared.settings import AgentMailSettings
from tests.support.api import ISSUED_SECRETS, new_client
from tests.support.log_scan import leaked_secrets

E2E_DB = "caseflow_e2e"


@pytest.fixture(scope="session")
def stack(nats_server: NatsServer, mongo_url: str, log_dir: Path) -> Iterator[Stack]:
    """The six services as real processes against the session's NATS and MongoDB."""
    running = Stack(
        log_dir=log_dir,
        nats=nats_server,
        mongo_url=mongo_url,
        env={
            "LOG_LEVEL": "DEBUG",
            "MONGO_DB": E2E_DB,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            # A small plan for cap tests; throttling is tested on its own gateway.
            "PLANS": "free:100,pro:10000,unlimited:0,tiny:10,one:1",
            "RATE_LIMIT_CREATE": "10000/10000",
            "RATE_LIMIT_DEFAULT": "10000/10000",
            # Many tests send bad keys on purpose from this one address; the throttle has its own gateway.
            "RATE_LIMIT_FAILED_AUTH": "10000/10000",
            # Admission control and the /readyz cache have tests on gateways of their own; here readiness is live
            # and concurrency tests (e.g. 50 creates against a cap) reach the services.
            "MAX_IN_FLIGHT_CREATE": "10000",
            "MAX_IN_FLIGHT_DEFAULT": "10000",
            "READYZ_CACHE_SECONDS": "0",
            # Long enough that only an eviction broadcast can make a revoked key fail within a second.
            "AUTH_CACHE_SECONDS": "3600",
            # One follow-up "hour" lasts half a second: a 72-hour delay is 36 s, a 1-hour delay 0.5 s.
            "FOLLOW_UP_HOUR_SECONDS": "0.5",
            # The open-cases gauge is counted every minute by default; a test waits for it to move.
            "CASE_GAUGE_REFRESH_SECONDS": "1",
            # Secrets the services hold; the session-end log scan (tests/support/log_scan.py) checks none leaks.
            "KEY_HASH_SECRET": "e2e-key-hash-secret-do-not-log",
            "OPENAI_API_KEY": "sk-e2e-openai-key-do-not-log",
        },
    )
    running.start()
    yield running
    running.stop()
    # After every test that used the stack, in any order: no secret in any line any process wrote.
    defaults = AgentMailSettings()
    secrets = {
        *ISSUED_SECRETS,
        running.env.get("AGENTMAIL_API_KEY", defaults.agentmail_api_key),
        running.env.get("AGENTMAIL_WEBHOOK_SECRET", defaults.agentmail_webhook_secret),
        running.env["KEY_HASH_SECRET"],
        running.env["OPENAI_API_KEY"],
    }
    log_files = list(log_dir.glob("*.log"))
    assert {path.stem for path in log_files} >= {"gateway", "auth", "billing", "case", "agentmail_adapter", "webhook"}
    lines, leaks = leaked_secrets(log_files, secrets)
    assert lines > 100, "the stack's processes should have logged"
    assert not leaks, "secrets in logs:\n" + "\n".join(leaks[:20])


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def stack_db(stack: Stack) -> AsyncIterator[AsyncDatabase[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(stack.env["MONGO_URL"])
    yield client[E2E_DB]
    await client.close()


@pytest.fixture
def client(stack: Stack) -> dict[str, Any]:
    """A fresh API client on the unlimited plan: {clientId, keyId, apiKey, webhookSecret}."""
    return new_client(stack)

"""Session fixtures: a real nats-server and a real MongoDB wire-protocol server on free ports.

Set TEST_MONGO_URL to run the same tests against a real MongoDB instead of the embedded server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import EmbeddedMongo, NatsServer
from shared.mongo import Document

# Fixtures shared by the modules that run the LLM agent against the fake OpenAI-compatible server.
pytest_plugins = ["tests.support.fake_openai"]


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def nats_server(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(log_dir=log_dir, store_dir=tmp_path_factory.mktemp("jetstream"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_url(log_dir: Path) -> Iterator[str]:
    external = os.environ.get("TEST_MONGO_URL")
    if external:
        yield external
        return
    server = EmbeddedMongo(log_dir=log_dir)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
async def mongo_db(mongo_url: str) -> AsyncIterator[AsyncDatabase[Document]]:
    """A fresh database per test, dropped afterwards."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    db = client[f"test_{uuid.uuid4().hex[:12]}"]
    yield db
    await client.drop_database(db.name)
    await client.close()


@pytest.fixture
def subject_prefix() -> str:
    """Isolates a test's subjects and streams from every other test on the shared server."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def raw_broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    """A plain connected client broker for driving and inspecting the server from a test."""
    from fast_depends.msgspec import MsgSpecSerializer

    broker = NatsBroker(nats_server.url, serializer=MsgSpecSerializer())
    await broker.connect()
    yield broker
    await broker.stop()

"""`python -m services.auth.admin parked ...` as an operator runs it (a subprocess per command) against a real
nats-server: a message parked by a real consumer is listed, shown, replayed (processed once; a second replay and
a replay cut short before its delete change nothing) and dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import pytest
from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError

from deploy.processes import NatsServer
from services.auth.admin_parked import replay_msg_id
from shared.logs import request_id_var
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.jetstream import durable_subscriber, ensure_streams, publish_durable
from shared.messaging.middleware import PermanentFailure
from shared.settings import CommonSettings, load_settings
from shared.subjects import MSG_ID_HEADER, PARKED, Service, StreamSpec, parked_subject
from tests.integration.test_admin_cli import Run, admin
from tests.support.simulator import eventually


class Job(msgspec.Struct):
    job_id: str


@dataclass
class Consumer:
    broker: NatsBroker
    stream: StreamSpec
    subject: str
    broken: set[str] = field(default_factory=set)
    processed: list[str] = field(default_factory=list)

    async def publish(self, job_id: str) -> None:
        token = request_id_var.set(f"req-{job_id}")
        try:
            await publish_durable(self.broker, self.subject, Job(job_id), stream=self.stream, msg_id=f"orig-{job_id}")
        finally:
            request_id_var.reset(token)


@pytest.fixture
async def consumer(nats_server: NatsServer, subject_prefix: str) -> AsyncIterator[Consumer]:
    settings = load_settings(CommonSettings, {"NATS_URL": nats_server.url, "CONSUMER_BACKOFF_SECONDS": "0.05"})
    broker = create_broker(settings, Service.CASE)
    stream = StreamSpec(
        name=f"{subject_prefix}_JOBS".upper(), subjects=(f"{subject_prefix}.jobs.>",), max_age_seconds=600
    )
    running = Consumer(broker=broker, stream=stream, subject=f"{subject_prefix}.jobs.run")

    @durable_subscriber(broker, subject=running.subject, stream=stream, durable="worker")
    async def work(job: Job) -> None:
        if job.job_id in running.broken:
            raise PermanentFailure(f"job {job.job_id} cannot run")
        running.processed.append(job.job_id)

    await broker.connect()
    await ensure_streams(broker, [stream], replicas=1)
    await broker.start()
    await flush_to_server(broker.connection)
    yield running
    await broker.stop()


@pytest.fixture
def env(nats_server: NatsServer) -> dict[str, str]:
    # No MongoDB: the parked commands work on NATS alone.
    return {
        **os.environ,
        "NATS_URL": nats_server.url,
        "MONGO_URL": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200",
    }


async def parked_from(env: dict[str, str], stream: StreamSpec) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = (await admin(env, "parked", "list", "--stream", stream.name)).json()
    return listed


async def park(env: dict[str, str], consumer: Consumer, job_id: str) -> dict[str, object]:
    consumer.broken.add(job_id)
    await consumer.publish(job_id)

    async def parked_on_the_stream() -> bool | None:
        try:
            await consumer.broker.connection.jetstream().get_last_msg(
                PARKED.name, parked_subject(consumer.stream.name, "worker")
            )
        except NotFoundError:
            return None
        return True

    await eventually(parked_on_the_stream, what=f"{job_id} parked")
    [row] = await parked_from(env, consumer.stream)
    return row


async def test_a_parked_message_is_listed_shown_and_replayed_once(env: dict[str, str], consumer: Consumer) -> None:
    row = await park(env, consumer, "j1")
    assert row["stream"] == consumer.stream.name
    assert row["consumer"] == "worker"
    assert row["reason"] == "PermanentFailure: job j1 cannot run"
    assert row["deliveries"] == 1
    assert isinstance(row["parkedAt"], int)
    sequence = str(row["sequence"])

    shown = (await admin(env, "parked", "show", sequence)).json()
    assert json.loads(shown["body"]) == {"job_id": "j1"}
    assert shown["originalMsgId"] == "orig-j1"
    assert shown["headers"]["X-Request-Id"] == "req-j1"
    assert not any(name.startswith(("Nats-", "Caseflow-Parked-")) for name in shown["headers"])
    table = await admin(env, "parked", "list", "--stream", consumer.stream.name, "--format", "table")
    assert table.code == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["sequence", "subject", "stream"]

    consumer.broken.clear()  # the operator fixed the cause
    replayed = (await admin(env, "parked", "replay", sequence)).json()
    assert replayed == {
        "sequence": int(sequence),
        "subject": consumer.subject,
        "stream": consumer.stream.name,
        "msgId": replay_msg_id(int(sequence)),
        "duplicate": False,
    }

    async def processed() -> list[str] | None:
        return consumer.processed or None

    assert await eventually(processed, what="the replayed job processed") == ["j1"]
    assert await parked_from(env, consumer.stream) == []

    again = await admin(env, "parked", "replay", sequence)
    assert again.code == 1
    assert f"no parked message with sequence {sequence}" in again.stderr
    assert "Traceback" not in again.stderr
    await asyncio.sleep(0.5)  # a second delivery would arrive within this
    assert consumer.processed == ["j1"]


async def test_a_replay_cut_short_before_its_delete_is_deduplicated_when_run_again(
    env: dict[str, str], consumer: Consumer
) -> None:
    row = await park(env, consumer, "j2")
    sequence = int(str(row["sequence"]))
    consumer.broken.clear()
    # The first half of a replay that died before deleting: the republish under the derived id.
    js = consumer.broker.connection.jetstream()
    raw = await js.get_msg(PARKED.name, seq=sequence)
    await js.publish(
        consumer.subject, raw.data or b"", stream=consumer.stream.name, headers={MSG_ID_HEADER: replay_msg_id(sequence)}
    )
    rerun: Run = await admin(env, "parked", "replay", str(sequence))
    assert rerun.json()["duplicate"] is True

    async def processed() -> list[str] | None:
        return consumer.processed or None

    assert await eventually(processed, what="the replayed job processed") == ["j2"]
    await asyncio.sleep(0.5)
    assert consumer.processed == ["j2"]
    assert await parked_from(env, consumer.stream) == []


async def test_a_dropped_message_is_gone_and_never_handled(env: dict[str, str], consumer: Consumer) -> None:
    row = await park(env, consumer, "j3")
    dropped = (await admin(env, "parked", "drop", str(row["sequence"]))).json()
    assert dropped == {"sequence": row["sequence"], "subject": consumer.subject}
    assert await parked_from(env, consumer.stream) == []
    missing = await admin(env, "parked", "show", str(row["sequence"]))
    assert missing.code == 1
    assert consumer.processed == []

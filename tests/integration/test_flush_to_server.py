"""`flush_to_server` against a real nats-server: once it returns, a request from another connection finds
every subscription made before it. nats-py's own `flush()` does not promise that (its PING can overtake a SUB
still queued for the flusher task), which left about 1 in 20 first requests with "no responders"."""

from __future__ import annotations

import uuid

import nats
import nats.errors
from nats.aio.msg import Msg

from deploy.processes import NatsServer
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.settings import CommonSettings, load_settings
from shared.subjects import Service

ROUNDS = 200
SUBSCRIPTIONS_PER_ROUND = 5


async def test_a_request_right_after_flush_to_server_finds_its_responder(nats_server: NatsServer) -> None:

    settings = load_settings(CommonSettings, {"NATS_URL": nats_server.url})
    service = create_broker(settings, Service.CASE)
    await service.connect()
    asker = await nats.connect(nats_server.url)

    async def answer(msg: Msg) -> None:
        await msg.respond(b"ok")

    no_responders = 0
    try:
        for _ in range(ROUNDS):
            subject = f"confirm.{uuid.uuid4().hex}"
            # Several SUBs queued at once, as a service's start makes them; the request goes to the last.
            for index in range(SUBSCRIPTIONS_PER_ROUND):
                await service.connection.subscribe(f"{subject}.{index}", queue="q", cb=answer)
            await flush_to_server(service.connection)
            try:
                reply = await asker.request(f"{subject}.{SUBSCRIPTIONS_PER_ROUND - 1}", b"", timeout=5)
            except nats.errors.NoRespondersError:
                no_responders += 1
            else:
                assert reply.data == b"ok"
    finally:
        await asker.close()
        await service.stop()
    assert no_responders == 0

"""Test helpers around the AgentMail simulator: its `/_sim` control API, a webhook endpoint that collects what
the simulator delivers, and `eventually` for waiting on asynchronous outcomes without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn
from faststream.nats import NatsBroker
from litestar import Litestar, Request, Response, post
from nats.js.errors import NotFoundError

from deploy.processes import Simulator, free_port
from shared.subjects import AGENTMAIL_EVENTS

API_KEY = "am_dev_simulator_key"
INBOX = "caseflow@sim.example"
WEBHOOK_SECRET = "whsec_ZGV2LW9ubHktYWdlbnRtYWlsLXdlYmhvb2stc2VjcmV0"

type Json = dict[str, Any]


async def eventually[T](check: Callable[[], Awaitable[T | None]], *, timeout: float = 15.0, what: str = "") -> T:
    """Poll `check` until it returns something other than None (or a falsy list); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None and result != []:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check.__name__}")
        await asyncio.sleep(0.05)


async def published[T](client: NatsBroker, subject: str, event_type: type[T]) -> list[T]:
    """Every message on `subject` in the AGENTMAIL_EVENTS stream, decoded (fine for the small streams of tests)."""
    js = client.connection.jetstream()
    try:
        state = (await js.stream_info(AGENTMAIL_EVENTS.name)).state
    except NotFoundError:
        return []
    found: list[T] = []
    if state.messages == 0:
        return found
    for sequence in range(state.first_seq, state.last_seq + 1):
        try:
            message = await js.get_msg(AGENTMAIL_EVENTS.name, sequence)
        except NotFoundError:  # deleted or aged out
            continue
        if message.subject == subject:
            assert message.data is not None
            found.append(msgspec.json.decode(message.data, type=event_type))
    return found


@contextmanager
def running_simulator(log_dir: Path, *, webhook_url: str = "", **settings: str) -> Iterator[Simulator]:
    """A simulator process for one test module; `settings` are AGENTMAIL_SIM_* values by field name."""
    env = {
        "AGENTMAIL_SIM_REPLY_DELAY_SECONDS": "0.1",
        "AGENTMAIL_SIM_EVENT_DELAY_SECONDS": "0.02",
        "AGENTMAIL_SIM_WEBHOOK_RETRY_SECONDS": "0.1,0.2,0.4",
        **{f"AGENTMAIL_SIM_{name.upper()}": value for name, value in settings.items()},
    }
    simulator = Simulator(log_dir=log_dir, webhook_url=webhook_url, env=env, name=f"agentmail_simulator_{free_port()}")
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


class SimulatorControl:
    """The simulator's `/_sim` control API, plus an authenticated client for its `/v0` API."""

    def __init__(self, base_url: str) -> None:
        self.control = httpx.AsyncClient(base_url=f"{base_url}/_sim", timeout=10)
        self.api = httpx.AsyncClient(
            base_url=f"{base_url}/v0", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )

    async def aclose(self) -> None:
        await self.control.aclose()
        await self.api.aclose()

    async def _json(self, response: httpx.Response) -> Any:
        assert response.is_success, response.text
        return response.json()

    async def reset(self) -> None:
        (await self.control.post("/reset")).raise_for_status()

    async def outbox(self, to: str | None = None) -> list[Json]:
        params = {"to": to} if to else {}
        body = await self._json(await self.control.get("/outbox", params=params))
        return list(body["messages"])

    async def inject(self, **fields: Any) -> Json:
        """POST /_sim/inbound; pass `from_` for the sender."""
        if "from_" in fields:
            fields["from"] = fields.pop("from_")
        return dict(await self._json(await self.control.post("/inbound", json=fields)))

    async def delivery_event(self, message_id: str, kind: str, reason: str | None = None) -> str:
        body = {"message_id": message_id, "kind": kind, **({"reason": reason} if reason else {})}
        return str((await self._json(await self.control.post("/delivery-events", json=body)))["event_id"])

    async def arm_fault(self, operation: str, **spec: Any) -> None:
        await self._json(await self.control.post("/faults", json={"operation": operation, **spec}))

    async def clear_faults(self) -> None:
        (await self.control.delete("/faults")).raise_for_status()

    async def calls(self, operation: str) -> list[Json]:
        return list(await self._json(await self.control.get("/calls", params={"operation": operation})))

    async def deliveries(self, event_id: str | None = None) -> list[Json]:
        params = {"event_id": event_id} if event_id else {}
        return list(await self._json(await self.control.get("/webhook-deliveries", params=params)))

    async def redeliver(self, event_id: str) -> list[Json]:
        return list(await self._json(await self.control.post(f"/webhook-deliveries/{event_id}/redeliver")))

    async def send(self, to: str, subject: str = "Signed W-9", text: str = "Could you send us your W-9?") -> Json:
        response = await self.api.post(
            f"/inboxes/{INBOX}/messages/send", json={"to": [to], "subject": subject, "text": text}
        )
        return dict(await self._json(response))

    async def thread(self, thread_id: str) -> Json:
        return dict(await self._json(await self.api.get(f"/inboxes/{INBOX}/threads/{thread_id}")))


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class WebhookSink:
    """An HTTP endpoint on a free port that records every POST and answers with queued statuses (then 200)."""

    port: int = field(default_factory=free_port)
    received: list[ReceivedWebhook] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def app(self) -> Litestar:
        @post("/hooks", status_code=200)
        async def hooks(request: Request[Any, Any, Any]) -> Response[bytes]:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self.received.append(ReceivedWebhook(headers, await request.body()))
            return Response(b"", status_code=self.statuses.popleft() if self.statuses else 200)

        return Litestar([hooks], openapi_config=None, logging_config=None)

    async def start(self) -> None:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def of_type(self, event_type: str) -> list[ReceivedWebhook]:
        return [hook for hook in self.received if f'"event_type":"{event_type}"' in hook.body.decode()]

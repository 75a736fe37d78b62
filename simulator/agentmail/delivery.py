"""Webhook delivery as AgentMail does it through Svix: signed POSTs, retried on failure, at least once.

Each event goes to every endpoint subscribed to its type, as its own delivery with a stable `svix-id` (the same
on every retry, as Svix does); every attempt is re-signed with a fresh `svix-timestamp` by the `svix` package,
so the production verifier checks real signatures. A non-2xx answer, a timeout or a refused connection is
retried after the delays in `AGENTMAIL_SIM_WEBHOOK_RETRY_SECONDS` (AgentMail's schedule, compressed).
Every attempt is recorded for the control API, and a recorded delivery can be sent again unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import msgspec
from svix.webhooks import Webhook as SvixSigner

from simulator.agentmail import wire

log = logging.getLogger("simulator.agentmail.webhooks")


@dataclass(frozen=True, slots=True)
class Endpoint:
    webhook_id: str
    url: str
    secret: str
    event_types: frozenset[str] | None  # None: every type
    inbox_ids: frozenset[str] | None = None

    def wants(self, event_type: str, inbox_id: str) -> bool:
        return (self.event_types is None or event_type in self.event_types) and (
            not self.inbox_ids or inbox_id in self.inbox_ids
        )


class Attempt(msgspec.Struct, frozen=True):
    at: str
    status: int | None  # None: no HTTP answer (timeout, connection refused)
    error: str | None = None


class Delivery(msgspec.Struct):
    """One event to one endpoint, with every attempt so far."""

    svix_id: str
    event_id: str
    event_type: str
    webhook_id: str
    url: str
    body: str
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    delivered: bool = False


@dataclass(slots=True)
class WebhookDispatcher:
    retry_seconds: Sequence[float]
    timeout_seconds: float
    deliveries: list[Delivery] = field(default_factory=list)
    _secrets: dict[str, str] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _http: httpx.AsyncClient | None = None

    def dispatch(self, event: wire.Event, inbox_id: str, endpoints: Sequence[Endpoint]) -> None:
        """Queue `event` for every endpoint that wants it; returns at once."""
        body = msgspec.json.encode(event).decode()
        for endpoint in endpoints:
            if not endpoint.wants(event.event_type, inbox_id):
                continue
            delivery = Delivery(
                svix_id=f"msg_{uuid.uuid4().hex}",
                event_id=event.event_id,
                event_type=event.event_type,
                webhook_id=endpoint.webhook_id,
                url=endpoint.url,
                body=body,
            )
            self._secrets[delivery.svix_id] = endpoint.secret
            self.deliveries.append(delivery)
            self._start(delivery)

    def redeliver(self, event_id: str) -> list[Delivery]:
        """Send the deliveries of `event_id` again, unchanged (same svix-id and body), as a Svix retry does."""
        found = [delivery for delivery in self.deliveries if delivery.event_id == event_id]
        for delivery in found:
            self._start(delivery)
        return found

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_seconds)
        signer = SvixSigner(self._secrets[delivery.svix_id])
        for delay in (0.0, *self.retry_seconds):
            await asyncio.sleep(delay)
            now = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "svix-id": delivery.svix_id,
                "svix-timestamp": str(int(now.timestamp())),
                "svix-signature": signer.sign(delivery.svix_id, now, delivery.body),
            }
            try:
                response = await self._http.post(delivery.url, content=delivery.body, headers=headers)
            except httpx.HTTPError as exc:
                delivery.attempts.append(Attempt(at=now.isoformat(), status=None, error=type(exc).__name__))
                log.warning("webhook delivery failed", extra={"url": delivery.url, "error": repr(exc)})
                continue
            delivery.attempts.append(Attempt(at=now.isoformat(), status=response.status_code))
            if response.is_success:
                delivery.delivered = True
                return
            log.warning(
                "webhook endpoint answered an error",
                extra={"url": delivery.url, "status": response.status_code, "event_id": delivery.event_id},
            )
        log.error("webhook delivery gave up", extra={"url": delivery.url, "event_id": delivery.event_id})

    async def reset(self) -> None:
        await self._cancel_all()
        self.deliveries.clear()
        self._secrets.clear()

    async def aclose(self) -> None:
        await self._cancel_all()
        if self._http is not None:
            await self._http.aclose()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""AgentMail's webhook ingress: `POST /webhooks/agentmail`, outside API-key auth (AgentMail signs instead).

The gateway does not verify or parse anything: it forwards the exact body bytes and the `svix-*` headers to the
adapter, which verifies the signature over those bytes (re-serialized JSON would not verify), deduplicates,
stores and publishes, and only then replies. A 2xx therefore means the event is durable; AgentMail retries
anything else. The route has its own body limit (AGENTMAIL_INGRESS_MAX_BODY_BYTES, far above the clients'), and a
body too large for one NATS message reaches the adapter through a JetStream object store, so a genuine event is
never refused for its size.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import nats.errors
from litestar import Request, post
from litestar.di import NamedDependency

from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ok
from services.gateway.guards import FAILED_AUTH, RateLimited
from services.gateway.openapi import error_responses
from shared.blobs import object_bucket
from shared.contracts.agentmail import (
    INGEST_WEBHOOK,
    INLINE_WEBHOOK_BODY_BYTES,
    WEBHOOK_SIGNATURE_HEADERS,
    IngestWebhook,
    WebhookAccepted,
)
from shared.errors import ErrorCode, ServiceError
from shared.subjects import AGENTMAIL_INGRESS_BODIES

log = logging.getLogger("caseflow.gateway.agentmail")


@post(
    "/webhooks/agentmail",
    status_code=200,
    # Not the client body limit (MAX_BODY_BYTES): AGENTMAIL_INGRESS_MAX_BODY_BYTES, enforced while reading.
    request_max_body_size=None,
    operation_id="ingestAgentMailWebhook",
    tags=["agentmail"],
    summary="Receive an AgentMail webhook (Svix-signed)",
    description="For AgentMail only: the body must be signed with the configured `AGENTMAIL_WEBHOOK_SECRET` "
    "(`svix-id`, `svix-timestamp`, `svix-signature`, 5-minute tolerance). 200 once the event is stored and "
    "published (`duplicate` is true for a repeated event id); 400 for a missing, wrong or stale signature.",
    responses=error_responses(
        ErrorCode.INVALID_REQUEST,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.RATE_LIMITED,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.SERVICE_UNAVAILABLE,
    ),
)
async def agentmail_webhook(
    request: Request[Any, Any, Any], gateway: NamedDependency[GatewayContext]
) -> DataEnvelope[WebhookAccepted]:
    # Bad signatures are counted per source like failed logins: a forger is answered 429 before costing more.
    source = "agentmail:" + gateway.source_of(request.client.host if request.client else None, request.headers)
    guard = gateway.throttle.peek(caller=source, route_class=FAILED_AUTH)
    if not guard.allowed:
        raise RateLimited(guard)
    body = await _read_body(request, limit=gateway.settings.agentmail_ingress_max_body_bytes)
    headers = {name: request.headers[name] for name in WEBHOOK_SIGNATURE_HEADERS if name in request.headers}
    try:
        return ok(await _forward(gateway, body, headers))
    except ServiceError as exc:
        if exc.code is ErrorCode.INVALID_REQUEST:
            gateway.throttle.take(caller=source, route_class=FAILED_AUTH)
        raise


async def _forward(gateway: GatewayContext, body: bytes, headers: dict[str, str]) -> WebhookAccepted:
    if len(body) <= INLINE_WEBHOOK_BODY_BYTES:
        return await _ingest(gateway, IngestWebhook(body=body, headers=headers))
    # Too large for one NATS message: the adapter reads the exact bytes from the object store to verify them.
    bodies = await object_bucket(gateway.broker, AGENTMAIL_INGRESS_BODIES)
    name = uuid.uuid4().hex
    await bodies.put(name, body)
    try:
        log.info("large AgentMail webhook forwarded through the object store", extra={"bytes": len(body)})
        return await _ingest(gateway, IngestWebhook(body=b"", headers=headers, body_object=name))
    finally:
        try:
            await bodies.delete(name)
        except nats.errors.Error:
            log.warning("could not delete a forwarded webhook body; the bucket's TTL will", exc_info=True)


async def _ingest(gateway: GatewayContext, forwarded: IngestWebhook) -> WebhookAccepted:
    return await gateway.rpc(INGEST_WEBHOOK, forwarded, WebhookAccepted)


async def _read_body(request: Request[Any, Any, Any], *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(ErrorCode.PAYLOAD_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(ErrorCode.PAYLOAD_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)

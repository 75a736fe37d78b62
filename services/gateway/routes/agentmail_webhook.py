"""AgentMail's webhook ingress: `POST /webhooks/agentmail`, outside API-key auth (AgentMail signs instead).

The gateway does not verify or parse anything: it forwards the exact body bytes and the `svix-*` headers to the
adapter, which verifies the signature over those bytes (re-serialized JSON would not verify), deduplicates,
stores and publishes, and only then replies. A 2xx therefore means the event is durable; AgentMail retries
anything else.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency

from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ok
from services.gateway.openapi import error_responses
from shared.contracts.agentmail import INGEST_WEBHOOK, WEBHOOK_SIGNATURE_HEADERS, IngestWebhook, WebhookAccepted
from shared.errors import ErrorCode
from shared.messaging import request as ask


@post(
    "/webhooks/agentmail",
    status_code=200,
    operation_id="ingestAgentMailWebhook",
    tags=["agentmail"],
    summary="Receive an AgentMail webhook (Svix-signed)",
    description="For AgentMail only: the body must be signed with the configured `AGENTMAIL_WEBHOOK_SECRET` "
    "(`svix-id`, `svix-timestamp`, `svix-signature`, 5-minute tolerance). 200 once the event is stored and "
    "published (`duplicate` is true for a repeated event id); 400 for a missing, wrong or stale signature.",
    responses=error_responses(ErrorCode.INVALID_REQUEST, ErrorCode.INTERNAL_ERROR, ErrorCode.SERVICE_UNAVAILABLE),
)
async def agentmail_webhook(
    request: Request[Any, Any, Any], gateway: NamedDependency[GatewayContext]
) -> DataEnvelope[WebhookAccepted]:
    body = await request.body()
    headers = {name: request.headers[name] for name in WEBHOOK_SIGNATURE_HEADERS if name in request.headers}
    accepted = await ask(
        gateway.broker,
        INGEST_WEBHOOK,
        IngestWebhook(body=body, headers=headers),
        WebhookAccepted,
        timeout=gateway.settings.rpc_timeout_seconds,
    )
    return ok(accepted)

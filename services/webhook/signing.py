"""Standard Webhooks signatures for client deliveries, with the client's current secret from the auth service.

The secret is asked for at every attempt, never cached: a secret rotated with the admin CLI signs the very
next delivery, retries of older events included (clients verify with whatever secret they hold now).
"""

from __future__ import annotations

import datetime as dt

from faststream.nats import NatsBroker
from standardwebhooks import Webhook

from shared.contracts.auth import WEBHOOK_SECRET, GetWebhookSecret, WebhookSecret
from shared.messaging.rpc import RpcClient


def signature_headers(secret: str, *, event_id: str, body: bytes, at: dt.datetime) -> dict[str, str]:
    """`webhook-id` (the event id, stable across attempts), `webhook-timestamp` (this attempt) and the signature."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body.decode()),
    }


class SigningSecrets:
    def __init__(self, broker: NatsBroker, *, timeout_seconds: float) -> None:
        self.rpc = RpcClient(broker, timeout_seconds)

    async def current(self, client_id: str) -> str:
        """The client's `whsec_` secret as auth holds it now; auth's errors arrive as ServiceError."""
        reply = await self.rpc(WEBHOOK_SECRET, GetWebhookSecret(client_id=client_id), WebhookSecret)
        return reply.secret

"""The auth service's NATS handlers: verify an API key, give a client's webhook signing secret.

Thin adapters over the store and the domain rules; errors are raised as ServiceError and become Err replies
(ServiceMiddleware). A client that no longer exists is answered UNAUTHORIZED in both handlers: for a key it
means the key authenticates nobody, and for a webhook secret it tells the webhook service that nothing may
be signed on that client's behalf (NOT_FOUND is the registry's "no such route", not "no such client").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from faststream.nats import NatsBroker

from services.auth.domain import hash_api_key, is_well_formed_api_key, require_usable_key
from services.auth.store import AuthStore
from shared.contracts.auth import (
    VERIFY_KEY,
    WEBHOOK_SECRET,
    GetWebhookSecret,
    KeyIdentity,
    VerifyKey,
    WebhookSecret,
)
from shared.contracts.rpc import Ok
from shared.errors import ErrorCode, ServiceError
from shared.messaging.responder import rpc_subscriber
from shared.subjects import Service, queue_group

# Every API request passes through VERIFY_KEY (on a gateway cache miss): answer several at once per replica.
CONCURRENT_REQUESTS: Final = 16


@dataclass(frozen=True)
class AuthApi:
    """What auth answers, each method one request: API keys by keyed hash, clients' webhook secrets."""

    broker: NatsBroker
    store: AuthStore
    key_hash_secret: str

    async def verify_key(self, request: VerifyKey) -> KeyIdentity:
        if not is_well_formed_api_key(request.api_key):
            raise ServiceError(ErrorCode.UNAUTHORIZED)
        key = await self.store.find_api_key_by_hash(hash_api_key(request.api_key, secret=self.key_hash_secret))
        if key is None:
            raise ServiceError(ErrorCode.UNAUTHORIZED)
        require_usable_key(key.status)
        client = await self.store.find_client(key.client_id)
        if client is None:
            raise ServiceError(ErrorCode.UNAUTHORIZED)
        return KeyIdentity(client_id=client.client_id, key_id=key.key_id, plan=client.plan)

    async def webhook_secret(self, request: GetWebhookSecret) -> WebhookSecret:
        client = await self.store.find_client(request.client_id)
        if client is None:
            raise ServiceError(ErrorCode.UNAUTHORIZED, "No client with that id.")
        return WebhookSecret(client_id=client.client_id, secret=client.webhook_secret)


def register(api: AuthApi) -> None:
    broker = api.broker
    queue = queue_group(Service.AUTH)

    @rpc_subscriber(broker, VERIFY_KEY, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def verify_key(request: VerifyKey) -> Ok[KeyIdentity]:
        return Ok(await api.verify_key(request))

    @rpc_subscriber(broker, WEBHOOK_SECRET, queue=queue, concurrency=CONCURRENT_REQUESTS)
    async def webhook_secret(request: GetWebhookSecret) -> Ok[WebhookSecret]:
        return Ok(await api.webhook_secret(request))

"""The auth service's collections: `clients` and `api_keys` (keys stored only as a keyed hash).

Documents are keyed by their public ids (`_id` is the clientId or keyId), so those are unique for free; a
key is found by its hash through a unique index. Status changes are conditional updates (the allowed
previous statuses are in the filter), so two operators racing cannot bring a revoked key back.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

import msgspec
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from services.auth.domain import KeyStatus
from services.auth.model import ApiKey, Client
from services.auth.secrets import SecretCipher
from shared.mongo import Document
from shared.records import to_document

CLIENTS: Final = "clients"
API_KEYS: Final = "api_keys"

INDEXES: Final = {
    CLIENTS: [
        IndexModel([("name", ASCENDING)], name="name"),
        # The admin CLI lists clients and keys in creation order: read in index order, not sorted in memory.
        IndexModel([("createdAt", ASCENDING), ("_id", ASCENDING)], name="created"),
    ],
    API_KEYS: [
        # Lookups are by hash; uniqueness makes a hash collision a write error, never a shared key.
        IndexModel([("keyHash", ASCENDING)], name="keyHash_unique", unique=True),
        IndexModel([("clientId", ASCENDING)], name="clientId"),
        IndexModel([("createdAt", ASCENDING), ("_id", ASCENDING)], name="created"),
    ],
}


def _api_key(document: Document | None) -> ApiKey | None:
    return None if document is None else msgspec.convert(document, ApiKey)


class AuthStore:
    def __init__(self, db: AsyncDatabase[Document], *, cipher: SecretCipher) -> None:
        self._clients = db[CLIENTS]
        self._keys = db[API_KEYS]
        self._cipher = cipher

    def _client_document(self, client: Client) -> Document:
        document = to_document(client)
        document["webhookSecret"] = self._cipher.encrypt(client.webhook_secret)
        return document

    def _client(self, document: Document | None) -> Client | None:
        if document is None:
            return None
        return msgspec.convert({**document, "webhookSecret": self._cipher.decrypt(document["webhookSecret"])}, Client)

    async def insert_client(self, client: Client) -> None:
        await self._clients.insert_one(self._client_document(client))

    async def insert_api_key(self, key: ApiKey) -> None:
        await self._keys.insert_one(to_document(key))

    async def find_client(self, client_id: str) -> Client | None:
        return self._client(await self._clients.find_one({"_id": client_id}))

    async def find_api_key(self, key_id: str) -> ApiKey | None:
        return _api_key(await self._keys.find_one({"_id": key_id}))

    async def find_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return _api_key(await self._keys.find_one({"keyHash": key_hash}))

    async def change_key_status(
        self, key_id: str, *, to: KeyStatus, allowed_from: Collection[KeyStatus], now: int
    ) -> ApiKey | None:
        """Set the status if the key's current one is in `allowed_from`; None when the key is missing or not."""
        return _api_key(
            await self._keys.find_one_and_update(
                {"_id": key_id, "status": {"$in": [str(status) for status in allowed_from]}},
                {"$set": {"status": str(to), "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
            )
        )

    async def set_plan(self, client_id: str, plan: str, *, now: int) -> Client | None:
        return await self._set_client_fields(client_id, {"plan": plan}, now=now)

    async def set_webhook_secret(self, client_id: str, secret: str, *, now: int) -> Client | None:
        return await self._set_client_fields(client_id, {"webhookSecret": self._cipher.encrypt(secret)}, now=now)

    async def _set_client_fields(self, client_id: str, fields: Document, *, now: int) -> Client | None:
        """None when there is no such client."""
        return self._client(
            await self._clients.find_one_and_update(
                {"_id": client_id},
                {"$set": {**fields, "updatedAt": now}},
                return_document=ReturnDocument.AFTER,
            )
        )

    async def list_clients(self) -> list[Client]:
        documents = await self._clients.find().sort([("createdAt", ASCENDING), ("_id", ASCENDING)]).to_list()
        return [client for document in documents if (client := self._client(document)) is not None]

    async def reencrypt_webhook_secrets(self) -> int:
        """Re-encrypt every client's webhook secret with the first key (after a rotation); returns how many
        documents changed. Each write is conditioned on the value it read, so a concurrent rotation wins."""
        changed = 0
        async for document in self._clients.find({}, {"webhookSecret": 1}):
            stored = document["webhookSecret"]
            fresh = self._cipher.reencrypt(stored)
            result = await self._clients.update_one(
                {"_id": document["_id"], "webhookSecret": stored}, {"$set": {"webhookSecret": fresh}}
            )
            changed += result.modified_count
        return changed

    async def list_api_keys(self) -> list[ApiKey]:
        documents = await self._keys.find().sort([("createdAt", ASCENDING), ("_id", ASCENDING)]).to_list()
        return [msgspec.convert(document, ApiKey) for document in documents]

"""Client and key management: the operations behind the admin CLI (and `make run`'s development client).

Design decision: these run in the operator's process against the auth service's own collections (through
`AuthStore`), not over NATS, so an operator can create the first client before anything else runs. They
return what changed; telling the gateways (KEYS_CHANGED) is the caller's job, because a change stands even
when NATS is unreachable.
"""

from __future__ import annotations

import msgspec

from services.auth.domain import (
    KeyStatus,
    hash_api_key,
    key_status_sources,
    new_api_key,
    new_client_id,
    new_key_id,
    new_webhook_secret,
)
from services.auth.model import ApiKey, Client
from services.auth.store import AuthStore
from shared.clock import Clock, system_clock, unix_ms


class AccountError(Exception):
    """An operator mistake (unknown client or key, a revoked key): reported as a message, never a traceback."""


class Output(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What an operation prints (JSON, camelCase like the rest of the API)."""

    def table_row(self) -> dict[str, object]:
        """The fields as `--format table` shows them (JSON names); outputs with nested or coded values adapt it."""
        row: dict[str, object] = msgspec.to_builtins(self)
        return row


class NewClient(Output, frozen=True, kw_only=True):
    client_id: str
    key_id: str
    api_key: str  # shown once; only its hash is stored
    webhook_secret: str


class IssuedKey(Output, frozen=True, kw_only=True):
    key_id: str
    api_key: str


class KeyState(Output, frozen=True, kw_only=True):
    key_id: str
    client_id: str
    status: KeyStatus
    changed: bool


class ClientPlan(Output, frozen=True, kw_only=True):
    client_id: str
    plan: str


class RotatedWebhookSecret(Output, frozen=True, kw_only=True):
    client_id: str
    webhook_secret: str


class ReencryptedSecrets(Output, frozen=True, kw_only=True):
    reencrypted: int


class KeySummary(Output, frozen=True, kw_only=True):
    key_id: str
    status: KeyStatus
    created_at: int
    updated_at: int


class ClientSummary(Output, frozen=True, kw_only=True):
    """A client as `list-clients` shows it: no secrets, no key material."""

    client_id: str
    name: str
    plan: str
    created_at: int
    updated_at: int
    keys: list[KeySummary]

    def table_row(self) -> dict[str, object]:
        row = super().table_row()
        row["keys"] = ", ".join(f"{key.key_id} ({key.status})" for key in self.keys)
        return row


class MonthlyUsage(Output, frozen=True, kw_only=True):
    """A client's usage in one UTC month, as `usage` shows it: auth's name and plan joined with billing's counter."""

    client_id: str
    name: str | None  # None for a client billing counts but auth does not know
    plan: str | None
    month: str
    used: int
    limit: int | None  # None: no cap, or unknown when plan_configured is False
    remaining: int | None
    plan_configured: bool  # False: PLANS does not configure the plan, so its limit is unknown

    def table_row(self) -> dict[str, object]:
        row = super().table_row()
        del row["planConfigured"]
        if self.limit is None:
            row["limit"] = row["remaining"] = "unlimited" if self.plan_configured else "unknown plan"
        return row


class Accounts:
    def __init__(self, store: AuthStore, *, key_hash_secret: str, clock: Clock = system_clock) -> None:
        self._store = store
        self._key_hash_secret = key_hash_secret
        self._clock = clock

    async def create_client(self, *, name: str, plan: str) -> NewClient:
        """A client with its first key. If issuing the key fails, the client stays and `issue_key` can retry."""
        now = unix_ms(self._clock())
        client = Client(
            client_id=new_client_id(),
            name=name,
            plan=plan,
            webhook_secret=new_webhook_secret(),
            created_at=now,
            updated_at=now,
        )
        await self._store.insert_client(client)
        issued = await self._issue_key_for(client.client_id, now=now)
        return NewClient(
            client_id=client.client_id,
            key_id=issued.key_id,
            api_key=issued.api_key,
            webhook_secret=client.webhook_secret,
        )

    async def issue_key(self, client_id: str) -> IssuedKey:
        await self._existing_client(client_id)
        return await self._issue_key_for(client_id, now=unix_ms(self._clock()))

    async def _issue_key_for(self, client_id: str, *, now: int) -> IssuedKey:
        api_key = new_api_key()
        key = ApiKey(
            key_id=new_key_id(),
            client_id=client_id,
            key_hash=hash_api_key(api_key, secret=self._key_hash_secret),
            status=KeyStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        await self._store.insert_api_key(key)
        return IssuedKey(key_id=key.key_id, api_key=api_key)

    async def deactivate_key(self, key_id: str) -> KeyState:
        """Requests with the key are refused (403) until it is activated again."""
        return await self._set_key_status(key_id, KeyStatus.INACTIVE)

    async def activate_key(self, key_id: str) -> KeyState:
        return await self._set_key_status(key_id, KeyStatus.ACTIVE)

    async def revoke_key(self, key_id: str) -> KeyState:
        """For good: the key is unknown from now on (401) and can never be activated again."""
        return await self._set_key_status(key_id, KeyStatus.REVOKED)

    async def _set_key_status(self, key_id: str, status: KeyStatus) -> KeyState:
        # Repeating a command is harmless (the key keeps its status), but a revoked key stays revoked.
        before = await self._store.find_api_key(key_id)
        if before is None:
            raise AccountError(f"no API key with id {key_id}")
        after = await self._store.change_key_status(
            key_id, to=status, allowed_from=key_status_sources(status), now=unix_ms(self._clock())
        )
        if after is None:
            # The filter refused the move: the key is (or has just become) revoked.
            raise AccountError(f"API key {key_id} is revoked and cannot be changed; issue a new key instead")
        return KeyState(
            key_id=key_id, client_id=after.client_id, status=after.status, changed=before.status != after.status
        )

    async def set_plan(self, client_id: str, plan: str) -> ClientPlan:
        client = await self._store.set_plan(client_id, plan, now=unix_ms(self._clock()))
        if client is None:
            raise _unknown_client(client_id)
        return ClientPlan(client_id=client.client_id, plan=client.plan)

    async def rotate_webhook_secret(self, client_id: str) -> RotatedWebhookSecret:
        """The old secret stops signing at once; the client must switch to the new one."""
        client = await self._store.set_webhook_secret(client_id, new_webhook_secret(), now=unix_ms(self._clock()))
        if client is None:
            raise _unknown_client(client_id)
        return RotatedWebhookSecret(client_id=client.client_id, webhook_secret=client.webhook_secret)

    async def reencrypt_webhook_secrets(self) -> ReencryptedSecrets:
        """After putting a new key first in WEBHOOK_SECRET_KEYS: every stored secret under that key."""
        return ReencryptedSecrets(reencrypted=await self._store.reencrypt_webhook_secrets())

    async def list_clients(self) -> list[ClientSummary]:
        keys_by_client: dict[str, list[KeySummary]] = {}
        for key in await self._store.list_api_keys():
            keys_by_client.setdefault(key.client_id, []).append(
                KeySummary(key_id=key.key_id, status=key.status, created_at=key.created_at, updated_at=key.updated_at)
            )
        return [
            ClientSummary(
                client_id=client.client_id,
                name=client.name,
                plan=client.plan,
                created_at=client.created_at,
                updated_at=client.updated_at,
                keys=keys_by_client.get(client.client_id, []),
            )
            for client in await self._store.list_clients()
        ]

    async def clients_to_report(self, client_id: str | None = None) -> list[Client]:
        """Every client, or only the one with `client_id` (which must exist)."""
        if client_id is not None:
            return [await self._existing_client(client_id)]
        return await self._store.list_clients()

    async def is_usable_key(self, api_key: str) -> bool:
        """Whether `api_key` is known and active (used by `make run` to check its saved development key)."""
        key = await self._store.find_api_key_by_hash(hash_api_key(api_key, secret=self._key_hash_secret))
        return key is not None and key.status is KeyStatus.ACTIVE

    async def _existing_client(self, client_id: str) -> Client:
        client = await self._store.find_client(client_id)
        if client is None:
            raise _unknown_client(client_id)
        return client


def _unknown_client(client_id: str) -> AccountError:
    return AccountError(f"no client with id {client_id}")

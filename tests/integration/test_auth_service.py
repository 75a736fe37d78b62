"""The auth service's handlers over a real nats-server and MongoDB: key verification and webhook secrets.

The handlers run on a NATS server of this module's own: the session's server also carries the e2e stack,
whose auth service answers the same subjects from another database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer, private_nats_server
from services.auth.accounts import AccountError, Accounts
from services.auth.handlers import AuthApi, register
from services.auth.store import API_KEYS, CLIENTS, INDEXES, AuthStore
from shared.contracts.auth import (
    VERIFY_KEY,
    WEBHOOK_SECRET,
    GetWebhookSecret,
    KeyIdentity,
    VerifyKey,
    WebhookSecret,
)
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import AuthSettings, load_settings
from shared.subjects import Service
from tests.support.auth import TEST_CIPHER

SECRET = "integration-test-key-hash-secret"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Overrides the session's server for this module (and so `raw_broker` connects here)."""
    with private_nats_server(Path(tmp_path_factory.mktemp("auth-nats"))) as server:
        yield server


@pytest.fixture
async def accounts(nats_server: NatsServer, mongo_db: AsyncDatabase[Document]) -> AsyncIterator[Accounts]:
    """The auth service's handlers running on the test database; yields the admin operations on it."""
    settings = load_settings(AuthSettings, {"NATS_URL": nats_server.url, "KEY_HASH_SECRET": SECRET})
    broker = create_broker(settings, Service.AUTH)
    store = AuthStore(mongo_db, cipher=TEST_CIPHER)
    await ensure_indexes(mongo_db, INDEXES)
    register(AuthApi(broker=broker, store=store, key_hash_secret=settings.key_hash_secret))
    await broker.start()
    await flush_to_server(broker.connection)
    yield Accounts(store, key_hash_secret=SECRET)
    await broker.stop()


async def verify(raw_broker: NatsBroker, api_key: str) -> KeyIdentity:
    return await request(raw_broker, VERIFY_KEY, VerifyKey(api_key=api_key), KeyIdentity, timeout=5)


async def refusal(raw_broker: NatsBroker, api_key: str) -> ErrorCode:
    with pytest.raises(ServiceError) as refused:
        await verify(raw_broker, api_key)
    return refused.value.code


async def test_an_active_key_identifies_its_client_key_and_plan(accounts: Accounts, raw_broker: NatsBroker) -> None:
    client = await accounts.create_client(name="acme", plan="pro")
    assert await verify(raw_broker, client.api_key) == KeyIdentity(
        client_id=client.client_id, key_id=client.key_id, plan="pro"
    )


@pytest.mark.parametrize(
    "api_key",
    ["", "not-a-key", "cf_live_", "cf_live_thisKeyWasNeverIssuedByAnyone0123456789abcdef", "cf_live_" + "k" * 5000],
)
async def test_unknown_empty_and_malformed_keys_are_unauthorized(
    accounts: Accounts, raw_broker: NatsBroker, api_key: str
) -> None:
    await accounts.create_client(name="acme", plan="pro")
    assert await refusal(raw_broker, api_key) is ErrorCode.UNAUTHORIZED


async def test_a_key_is_checked_whole_not_by_its_prefix(accounts: Accounts, raw_broker: NatsBroker) -> None:
    client = await accounts.create_client(name="acme", plan="pro")
    assert await refusal(raw_broker, client.api_key[:-1]) is ErrorCode.UNAUTHORIZED
    assert await refusal(raw_broker, client.api_key + "x") is ErrorCode.UNAUTHORIZED


async def test_a_deactivated_key_is_forbidden_and_works_again_once_activated(
    accounts: Accounts, raw_broker: NatsBroker
) -> None:
    client = await accounts.create_client(name="acme", plan="free")
    await accounts.deactivate_key(client.key_id)
    assert await refusal(raw_broker, client.api_key) is ErrorCode.FORBIDDEN
    await accounts.activate_key(client.key_id)
    assert (await verify(raw_broker, client.api_key)).key_id == client.key_id


async def test_a_revoked_key_is_unauthorized_for_good(accounts: Accounts, raw_broker: NatsBroker) -> None:
    client = await accounts.create_client(name="acme", plan="free")
    second = await accounts.issue_key(client.client_id)
    await accounts.revoke_key(client.key_id)
    assert await refusal(raw_broker, client.api_key) is ErrorCode.UNAUTHORIZED
    with pytest.raises(AccountError, match="revoked"):
        await accounts.activate_key(client.key_id)
    assert await refusal(raw_broker, client.api_key) is ErrorCode.UNAUTHORIZED
    # The client's other key is untouched.
    assert (await verify(raw_broker, second.api_key)).key_id == second.key_id


async def test_a_plan_change_shows_in_the_next_verification(accounts: Accounts, raw_broker: NatsBroker) -> None:
    client = await accounts.create_client(name="acme", plan="free")
    await accounts.set_plan(client.client_id, "pro")
    assert (await verify(raw_broker, client.api_key)).plan == "pro"


async def test_keys_of_a_client_that_no_longer_exists_are_unauthorized(
    accounts: Accounts, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    client = await accounts.create_client(name="gone", plan="free")
    await mongo_db[CLIENTS].delete_one({"_id": client.client_id})
    assert await refusal(raw_broker, client.api_key) is ErrorCode.UNAUTHORIZED


async def test_a_key_hashed_under_another_secret_is_unknown(
    accounts: Accounts, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document]
) -> None:
    other = await Accounts(
        AuthStore(mongo_db, cipher=TEST_CIPHER), key_hash_secret="another-deployment-secret"
    ).create_client(name="elsewhere", plan="free")
    assert await mongo_db[API_KEYS].count_documents({"_id": other.key_id}) == 1
    assert await refusal(raw_broker, other.api_key) is ErrorCode.UNAUTHORIZED


async def test_many_verifications_at_once_each_get_their_own_answer(accounts: Accounts, raw_broker: NatsBroker) -> None:
    clients = [await accounts.create_client(name=f"client-{n}", plan=f"plan-{n}") for n in range(20)]
    identities = await asyncio.gather(*(verify(raw_broker, client.api_key) for client in clients * 2))
    expected = [
        KeyIdentity(client_id=client.client_id, key_id=client.key_id, plan=f"plan-{n}")
        for n, client in enumerate(clients)
    ]
    assert identities == expected * 2


async def test_the_webhook_secret_is_the_clients_current_one(accounts: Accounts, raw_broker: NatsBroker) -> None:
    client = await accounts.create_client(name="acme", plan="free")

    async def secret_of(client_id: str) -> WebhookSecret:
        return await request(
            raw_broker, WEBHOOK_SECRET, GetWebhookSecret(client_id=client_id), WebhookSecret, timeout=5
        )

    assert await secret_of(client.client_id) == WebhookSecret(client_id=client.client_id, secret=client.webhook_secret)
    rotated = await accounts.rotate_webhook_secret(client.client_id)
    assert rotated.webhook_secret != client.webhook_secret
    assert (await secret_of(client.client_id)).secret == rotated.webhook_secret
    with pytest.raises(ServiceError) as unknown:
        await secret_of("cli_nobody")
    assert unknown.value.code is ErrorCode.UNAUTHORIZED

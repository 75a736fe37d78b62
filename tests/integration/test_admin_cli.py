"""The admin CLI as an operator runs it: a subprocess per command against real MongoDB and NATS.

Checks every subcommand's JSON output and exit code, the KEYS_CHANGED broadcast (heard the way a gateway
hears it), that a change stands when NATS is down, and that no plaintext API key reaches the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import ROOT, NatsServer, free_port, private_nats_server
from services.auth import admin as admin_cli
from services.auth.accounts import Accounts
from services.auth.secrets import SecretCipher
from services.auth.store import AuthStore
from shared.contracts.auth import KEYS_CHANGED, KeysChanged
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.mongo import Document
from shared.settings import AuthSettings, GatewaySettings, load_settings
from shared.subjects import Service
from tests.support.auth import TEST_CIPHER

SECRET = "admin-cli-test-key-hash-secret"
SUBCOMMANDS = (
    "create-client",
    "issue-key",
    "deactivate-key",
    "activate-key",
    "revoke-key",
    "set-plan",
    "rotate-webhook-secret",
    "reencrypt-webhook-secrets",
    "list-clients",
    "unmatched",
)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        assert self.stderr == "", self.stderr
        return json.loads(self.stdout)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Overrides the session's server for this module: the e2e stack's gateways listen there too."""
    with private_nats_server(Path(tmp_path_factory.mktemp("admin-nats"))) as server:
        yield server


@pytest.fixture
def admin_env(nats_server: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": nats_server.url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db.name,
        "KEY_HASH_SECRET": SECRET,
    }


async def admin(env: dict[str, str], *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.auth.admin",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
async def gateway_ears(nats_server: NatsServer) -> AsyncIterator[asyncio.Queue[KeysChanged]]:
    """KEYS_CHANGED as a gateway hears it: a FastStream subscriber without a queue group."""
    heard: asyncio.Queue[KeysChanged] = asyncio.Queue()
    broker = create_broker(load_settings(GatewaySettings, {"NATS_URL": nats_server.url}), Service.GATEWAY)

    @broker.subscriber(KEYS_CHANGED)
    async def evict(change: KeysChanged) -> None:
        await heard.put(change)

    await broker.start()
    await flush_to_server(broker.connection)
    yield heard
    await broker.stop()


def accounts_on(db: AsyncDatabase[Document]) -> Accounts:
    return Accounts(AuthStore(db, cipher=TEST_CIPHER), key_hash_secret=SECRET)


async def test_create_client_prints_its_first_key_once_and_the_key_works(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    created = (await admin(admin_env, "create-client", "--name", "Acme Corp", "--plan", "pro")).json()
    assert set(created) == {"clientId", "keyId", "apiKey", "webhookSecret"}
    assert created["apiKey"].startswith("cf_live_")
    assert created["webhookSecret"].startswith("whsec_")
    assert await accounts_on(mongo_db).is_usable_key(created["apiKey"])
    assert await mongo_db.clients.find_one({"_id": created["clientId"]}, {"_id": 0, "name": 1, "plan": 1}) == {
        "name": "Acme Corp",
        "plan": "pro",
    }


async def test_issue_key_adds_a_second_independent_key(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    accounts = accounts_on(mongo_db)
    created = await accounts.create_client(name="acme", plan="free")
    issued = (await admin(admin_env, "issue-key", created.client_id)).json()
    assert set(issued) == {"keyId", "apiKey"}
    assert issued["keyId"] != created.key_id
    assert issued["apiKey"] != created.api_key
    assert await accounts.is_usable_key(created.api_key)
    assert await accounts.is_usable_key(issued["apiKey"])


async def test_key_and_plan_changes_are_broadcast_to_the_gateways(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document], gateway_ears: asyncio.Queue[KeysChanged]
) -> None:
    accounts = accounts_on(mongo_db)
    created = await accounts.create_client(name="acme", plan="free")
    client_id, key_id = created.client_id, created.key_id
    key_change = KeysChanged(client_id=client_id, key_id=key_id)

    for command, status, usable in (
        ("deactivate-key", "inactive", False),
        ("activate-key", "active", True),
        ("revoke-key", "revoked", False),
    ):
        shown = (await admin(admin_env, command, key_id)).json()
        assert shown == {"keyId": key_id, "clientId": client_id, "status": status, "changed": True}
        assert await asyncio.wait_for(gateway_ears.get(), timeout=5) == key_change
        assert await accounts.is_usable_key(created.api_key) is usable

    assert (await admin(admin_env, "set-plan", client_id, "pro")).json() == {"clientId": client_id, "plan": "pro"}
    assert await asyncio.wait_for(gateway_ears.get(), timeout=5) == KeysChanged(client_id=client_id)
    # Creating, issuing and rotating change no cached identity: nothing else was broadcast.
    await asyncio.gather(admin(admin_env, "issue-key", client_id), admin(admin_env, "rotate-webhook-secret", client_id))
    assert gateway_ears.empty()


async def test_repeating_a_key_command_is_harmless_but_a_revoked_key_stays_revoked(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    accounts = accounts_on(mongo_db)
    created = await accounts.create_client(name="acme", plan="free")
    key_id = created.key_id
    await accounts.deactivate_key(key_id)
    assert (await admin(admin_env, "deactivate-key", key_id)).json()["changed"] is False
    await accounts.revoke_key(key_id)
    again = (await admin(admin_env, "revoke-key", key_id)).json()
    assert (again["status"], again["changed"]) == ("revoked", False)
    runs = await asyncio.gather(admin(admin_env, "activate-key", key_id), admin(admin_env, "deactivate-key", key_id))
    for refused in runs:
        assert refused.code == 1
        assert refused.stdout == ""
        assert f"{key_id} is revoked" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not await accounts.is_usable_key(created.api_key)


async def test_rotate_webhook_secret_prints_the_new_secret_and_replaces_the_old(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    created = await accounts_on(mongo_db).create_client(name="acme", plan="free")
    rotated = (await admin(admin_env, "rotate-webhook-secret", created.client_id)).json()
    assert rotated["clientId"] == created.client_id
    assert rotated["webhookSecret"].startswith("whsec_")
    assert rotated["webhookSecret"] != created.webhook_secret
    stored = await mongo_db.clients.find_one({"_id": created.client_id})
    assert stored is not None
    # Stored encrypted, never as the secret itself.
    assert rotated["webhookSecret"] not in repr(stored)
    assert TEST_CIPHER.decrypt(stored["webhookSecret"]) == rotated["webhookSecret"]


async def test_encryption_key_rotation__reencrypted_secrets_read_with_the_new_key_alone(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    old_key, new_key = AuthSettings().webhook_secret_keys[0], Fernet.generate_key().decode()
    created = await accounts_on(mongo_db).create_client(name="acme", plan="free")
    # Only the old key: the new-key-only deployment cannot read the secret yet, and says so in one line.
    new_only = {**admin_env, "WEBHOOK_SECRET_KEYS": new_key}
    refused = await admin(new_only, "list-clients")
    assert (refused.code, refused.stdout) == (1, "")
    assert "WEBHOOK_SECRET_KEYS" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Rotation as documented: the new key first, re-encrypt, then drop the old key.
    both = {**admin_env, "WEBHOOK_SECRET_KEYS": f"{new_key},{old_key}"}
    assert (await admin(both, "reencrypt-webhook-secrets")).json() == {"reencrypted": 1}
    [client] = await AuthStore(mongo_db, cipher=SecretCipher([new_key])).list_clients()
    assert client.webhook_secret == created.webhook_secret
    assert (await admin(new_only, "list-clients")).json()[0]["clientId"] == created.client_id


async def test_list_clients_shows_plans_and_key_states_but_no_secrets(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    accounts = accounts_on(mongo_db)
    first = await accounts.create_client(name="first", plan="free")
    second = await accounts.create_client(name="second", plan="pro")
    extra = await accounts.issue_key(second.client_id)
    await accounts.revoke_key(second.key_id)
    listing = await admin(admin_env, "list-clients")
    clients = {client["clientId"]: client for client in listing.json()}
    assert set(clients) == {first.client_id, second.client_id}
    assert (clients[first.client_id]["name"], clients[first.client_id]["plan"]) == ("first", "free")
    assert {key["keyId"]: key["status"] for key in clients[second.client_id]["keys"]} == {
        second.key_id: "revoked",
        extra.key_id: "active",
    }
    for secret in (first.api_key, second.api_key, extra.api_key, first.webhook_secret, "keyHash"):
        assert secret not in listing.stdout


async def test_list_clients_on_an_empty_database_is_an_empty_list(admin_env: dict[str, str]) -> None:
    assert (await admin(admin_env, "list-clients")).json() == []


UNKNOWN_IDS = (
    ("issue-key", "cli_nobody"),
    ("set-plan", "cli_nobody", "pro"),
    ("rotate-webhook-secret", "cli_nobody"),
    ("deactivate-key", "key_nobody"),
    ("activate-key", "key_nobody"),
    ("revoke-key", "key_nobody"),
)
BAD_ARGUMENTS = (
    ("create-client", "--name", "acme", "--plan", "   "),
    ("create-client", "--name", "", "--plan", "free"),
    ("create-client", "--plan", "free"),
    ("set-plan", "cli_x", ""),
    ("issue-key",),
    ("make-coffee",),
    (),
)


async def test_an_unknown_client_or_key_is_a_one_line_error_with_exit_code_1(admin_env: dict[str, str]) -> None:
    runs = await asyncio.gather(*(admin(admin_env, *args) for args in UNKNOWN_IDS))
    for args, refused in zip(UNKNOWN_IDS, runs, strict=True):
        assert refused.code == 1, args
        assert refused.stdout == ""
        assert args[1] in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "Traceback" not in refused.stderr


async def test_bad_arguments_exit_2_with_usage(admin_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    refused = await admin(admin_env, *BAD_ARGUMENTS[0])
    assert refused.code == 2
    assert "--plan: must not be empty" in refused.stderr
    # The rest in-process: argparse refuses them before any I/O, the same way.
    for args in BAD_ARGUMENTS[1:]:
        with pytest.raises(SystemExit) as exited:
            admin_cli.main(list(args))
        assert exited.value.code == 2, args
        assert "usage:" in capsys.readouterr().err


async def test_every_command_documents_itself(admin_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    overview = await admin(admin_env, "--help")
    assert overview.code == 0
    for command in SUBCOMMANDS:
        assert command in overview.stdout
        with pytest.raises(SystemExit) as exited:
            admin_cli.main([command, "--help"])
        assert exited.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m services.auth.admin {command}")


async def test_a_bad_setting_is_named_and_stops_the_cli(admin_env: dict[str, str]) -> None:
    refused = await admin({**admin_env, "KEY_HASH_SECRET": "short"}, "list-clients")
    assert refused.code == 2
    assert "KEY_HASH_SECRET" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_an_unreachable_mongodb_is_a_one_line_error(admin_env: dict[str, str]) -> None:
    env = {**admin_env, "MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/", "MONGO_TIMEOUT_SECONDS": "0.5"}
    refused = await admin(env, "list-clients")
    assert refused.code == 1
    assert "MongoDB" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_with_nats_unreachable_a_change_still_stands_and_the_cli_says_so(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    accounts = accounts_on(mongo_db)
    created = await accounts.create_client(name="acme", plan="free")
    offline = {**admin_env, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    revoked = await admin(offline, "revoke-key", created.key_id)
    assert revoked.code == 0
    assert json.loads(revoked.stdout)["status"] == "revoked"
    assert "warning" in revoked.stderr
    assert "cache" in revoked.stderr
    assert "Traceback" not in revoked.stderr
    assert not await accounts.is_usable_key(created.api_key)


async def test_no_plaintext_api_key_is_stored_anywhere_in_the_database(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    runs = await asyncio.gather(
        *(admin(admin_env, "create-client", "--name", f"client-{n}", "--plan", "free") for n in range(3))
    )
    created = [run.json() for run in runs]
    runs = await asyncio.gather(*(admin(admin_env, "issue-key", client["clientId"]) for client in created[:2]))
    issued = [run.json() for run in runs]
    await admin(admin_env, "deactivate-key", issued[0]["keyId"])
    await admin(admin_env, "set-plan", created[0]["clientId"], "pro")
    api_keys = [entry["apiKey"] for entry in created + issued]
    # The part after the prefix is the secret: not even that may appear, in any form we can think of.
    key_bodies = [key.removeprefix("cf_live_") for key in api_keys]

    stored_text = []
    for collection in await mongo_db.list_collection_names():
        async for document in mongo_db[collection].find():
            stored_text.append(repr(document))
    everything = "\n".join(stored_text)

    # The scan sees what is stored: every key id is there, the webhook secrets only encrypted.
    for entry in created:
        assert entry["webhookSecret"] not in everything
        assert entry["webhookSecret"].removeprefix("whsec_")[:16] not in everything
    for entry in created + issued:
        assert entry["keyId"] in everything
    for body in key_bodies:
        assert body not in everything
        assert body[:16] not in everything
        assert body.encode().hex() not in everything

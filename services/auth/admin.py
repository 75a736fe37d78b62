"""Admin CLI for clients and API keys: `python -m services.auth.admin <command> ...` (see `--help`).

It reads the same environment settings as the auth service and works on MongoDB directly through the auth
store (it is the auth service's own code). Results are JSON on stdout; operator mistakes are one line on
stderr with exit code 1, never a traceback. After a change that affects a cached identity (key status, plan)
it broadcasts KEYS_CHANGED so every gateway evicts it at once; if NATS is unreachable the change still
stands and gateways pick it up when their cached entries expire, which the CLI says on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import nats
import nats.errors
from pymongo.errors import PyMongoError

from services.auth.accounts import AccountError, Accounts, ClientPlan, KeyState, Output
from services.auth.store import INDEXES, AuthStore
from shared.contracts.auth import KEYS_CHANGED, KeysChanged
from shared.mongo import create_mongo_client, ensure_indexes
from shared.settings import AuthSettings, load_settings_or_exit

PROG = "python -m services.auth.admin"
NATS_CONNECT_TIMEOUT_SECONDS = 2.0

type Result = Output | Sequence[Output]
type Command = Callable[[Accounts, argparse.Namespace], Awaitable[Result]]


def _non_blank(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise argparse.ArgumentTypeError("must not be empty")
    return stripped


COMMANDS: dict[str, tuple[str, Command]] = {
    "create-client": (
        "create a client with its first API key; prints {clientId, keyId, apiKey, webhookSecret}",
        lambda accounts, args: accounts.create_client(name=args.name, plan=args.plan),
    ),
    "issue-key": (
        "issue another API key for a client; prints {keyId, apiKey} (the key is shown only this once)",
        lambda accounts, args: accounts.issue_key(args.client_id),
    ),
    "deactivate-key": (
        "switch a key off (requests get 403 FORBIDDEN) until activate-key",
        lambda accounts, args: accounts.deactivate_key(args.key_id),
    ),
    "activate-key": (
        "switch a deactivated key back on",
        lambda accounts, args: accounts.activate_key(args.key_id),
    ),
    "revoke-key": (
        "revoke a key for good (requests get 401 UNAUTHORIZED); it cannot be activated again",
        lambda accounts, args: accounts.revoke_key(args.key_id),
    ),
    "set-plan": (
        "change a client's plan (billing owns the plans' caps)",
        lambda accounts, args: accounts.set_plan(args.client_id, args.plan),
    ),
    "rotate-webhook-secret": (
        "replace a client's webhook signing secret; prints the new whsec_ secret",
        lambda accounts, args: accounts.rotate_webhook_secret(args.client_id),
    ),
    "list-clients": (
        "list every client with its plan and its keys' ids and statuses (no secrets)",
        lambda accounts, args: accounts.list_clients(),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage Caseflow clients and API keys. Settings (MONGO_URL, MONGO_DB, NATS_URL, "
        "KEY_HASH_SECRET) come from the environment, as for the auth service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {
        name: commands.add_parser(name, help=summary, description=summary) for name, (summary, _) in COMMANDS.items()
    }
    subparsers["create-client"].add_argument("--name", required=True, type=_non_blank, help="display name")
    subparsers["create-client"].add_argument(
        "--plan", required=True, type=_non_blank, help="plan name, e.g. free, pro, unlimited"
    )
    for name in ("issue-key", "set-plan", "rotate-webhook-secret"):
        subparsers[name].add_argument("client_id", metavar="CLIENT", help="the client's id (cli_...)")
    subparsers["set-plan"].add_argument("plan", metavar="PLAN", type=_non_blank, help="the new plan name")
    for name in ("deactivate-key", "activate-key", "revoke-key"):
        subparsers[name].add_argument("key_id", metavar="KEY_ID", help="the key's public id (key_...)")
    return parser


def keys_change_of(result: Result) -> KeysChanged | None:
    """The broadcast a result calls for: gateways cache (client, key, plan), so only those changes count."""
    if isinstance(result, KeyState):
        return KeysChanged(client_id=result.client_id, key_id=result.key_id)
    if isinstance(result, ClientPlan):
        return KeysChanged(client_id=result.client_id)
    return None


async def broadcast_keys_changed(nats_url: str, change: KeysChanged) -> bool:
    """Publish KEYS_CHANGED on core NATS; False when NATS cannot be reached."""

    async def stay_quiet(_: Exception) -> None:
        # nats-py logs connection errors with a traceback by default; the caller reports the outcome.
        return None

    try:
        async with asyncio.timeout(NATS_CONNECT_TIMEOUT_SECONDS * 2):
            connection = await nats.connect(
                nats_url,
                name="caseflow-auth-admin",
                connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=stay_quiet,
            )
            try:
                await connection.publish(
                    KEYS_CHANGED, msgspec.json.encode(change), headers={"content-type": "application/json"}
                )
                await connection.flush()
            finally:
                await connection.close()
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    return True


async def run(settings: AuthSettings, args: argparse.Namespace) -> Result:
    mongo = create_mongo_client(settings, app_name="caseflow-auth-admin")
    try:
        db = mongo[settings.mongo_db]
        # The CLI may run before the auth service ever started: the unique hash index must exist first.
        await ensure_indexes(db, INDEXES, attempts=1)
        accounts = Accounts(AuthStore(db), key_hash_secret=settings.key_hash_secret)
        _, command = COMMANDS[args.command]
        result = await command(accounts, args)
    finally:
        await mongo.close()
    change = keys_change_of(result)
    if change is not None and not await broadcast_keys_changed(settings.nats_url, change):
        print(
            "warning: the change is saved, but NATS could not be reached to tell the gateways (NATS_URL); "
            "they will pick it up when their cached identities expire.",
            file=sys.stderr,
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings_or_exit(AuthSettings, "auth admin")
    try:
        result = asyncio.run(run(settings, args))
    except AccountError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"{PROG} {args.command}: MongoDB failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

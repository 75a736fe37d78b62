"""Admin CLI for clients and API keys: `python -m services.auth.admin <command> ...` (see `--help`).

It reads the same environment settings as the auth service and works on MongoDB directly through the auth
store (it is the auth service's own code). Results are JSON on stdout (`--format table` for people); operator
mistakes are one line on stderr with exit code 1, never a traceback. After a change that affects a cached
identity (key status, plan) it broadcasts KEYS_CHANGED so every gateway evicts it at once; if NATS is
unreachable the change still stands and gateways pick it up when their cached entries expire, which the CLI
says on stderr.

`unmatched list` reads the case service's `unmatched_messages` (inbound mail no case could take) the same way.
`usage` is the one command that needs a running service: usage counters belong to billing, so it asks billing
over NATS (USAGE_REPORT) with the plans auth holds, and joins the answer with the clients' names. `parked ...`
works on the PARKED stream over NATS only (services.auth.admin_parked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from pymongo.errors import PyMongoError

from services.auth import admin_parked
from services.auth.accounts import AccountError, Accounts, ClientPlan, KeyState, MonthlyUsage, Output
from services.auth.model import Client
from services.auth.secrets import SecretCipher, UndecryptableSecret
from services.auth.store import INDEXES, AuthStore
from shared.contracts.auth import KEYS_CHANGED, KeysChanged
from shared.contracts.billing import USAGE_MONTH_PATTERN, USAGE_REPORT, GetUsageReport, UsageReport
from shared.contracts.rpc import Err, Ok
from shared.messaging.connection import nats_connect_options
from shared.mongo import create_mongo_client, ensure_indexes
from shared.settings import AuthSettings, CommonSettings, load_settings_or_exit
from shared.subjects import ADMIN_NATS_USER

PROG = "python -m services.auth.admin"
NATS_CONNECT_TIMEOUT_SECONDS = 2.0
FORMATS = ("json", "table")


class ServiceUnavailable(Exception):
    """A service the command needs (NATS, billing) did not answer: reported as one line, never a traceback."""


@dataclass(frozen=True)
class Admin:
    """What a command works with: the auth store's operations, and the settings (NATS for `usage`)."""

    accounts: Accounts
    settings: AuthSettings


type Result = Output | Sequence[Output]
type Command = Callable[[Admin, argparse.Namespace], Awaitable[Result]]


def _non_blank(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise argparse.ArgumentTypeError("must not be empty")
    return stripped


def _usage_month(text: str) -> str:
    if not re.fullmatch(USAGE_MONTH_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM (UTC), e.g. 2025-06")
    return text


COMMANDS: dict[str, tuple[str, Command]] = {
    "create-client": (
        "create a client with its first API key; prints {clientId, keyId, apiKey, webhookSecret}",
        lambda admin, args: admin.accounts.create_client(name=args.name, plan=args.plan),
    ),
    "issue-key": (
        "issue another API key for a client; prints {keyId, apiKey} (the key is shown only this once)",
        lambda admin, args: admin.accounts.issue_key(args.client_id),
    ),
    "deactivate-key": (
        "switch a key off (requests get 403 FORBIDDEN) until activate-key",
        lambda admin, args: admin.accounts.deactivate_key(args.key_id),
    ),
    "activate-key": (
        "switch a deactivated key back on",
        lambda admin, args: admin.accounts.activate_key(args.key_id),
    ),
    "revoke-key": (
        "revoke a key for good (requests get 401 UNAUTHORIZED); it cannot be activated again",
        lambda admin, args: admin.accounts.revoke_key(args.key_id),
    ),
    "set-plan": (
        "change a client's plan (billing owns the plans' caps)",
        lambda admin, args: admin.accounts.set_plan(args.client_id, args.plan),
    ),
    "rotate-webhook-secret": (
        "replace a client's webhook signing secret; prints the new whsec_ secret",
        lambda admin, args: admin.accounts.rotate_webhook_secret(args.client_id),
    ),
    "reencrypt-webhook-secrets": (
        "re-encrypt every stored webhook secret with the first WEBHOOK_SECRET_KEYS key (after a key rotation)",
        lambda admin, args: admin.accounts.reencrypt_webhook_secrets(),
    ),
    "list-clients": (
        "list every client with its plan and its keys' ids and statuses (no secrets)",
        lambda admin, args: admin.accounts.list_clients(),
    ),
    "usage": (
        "show each client's usage in a UTC month (asks the billing service over NATS): "
        "[{clientId, name, plan, month, used, limit, remaining, planConfigured}]",
        lambda admin, args: usage_report(admin, month=args.month, client_id=args.client_id),
    ),
    "unmatched": (
        "`unmatched list`: inbound mail that matched no case or several open cases, newest first (the case "
        "service stores it, never discards it)",
        lambda admin, args: unmatched_messages(admin.settings, limit=args.limit),
    ),
}


class UnmatchedRow(Output, frozen=True, kw_only=True):
    message_id: str
    reason: str
    from_address: str
    subject: str
    thread_id: str
    received_at: int
    candidate_case_ids: list[str]

    def table_row(self) -> dict[str, object]:
        row = super().table_row()
        row["candidateCaseIds"] = ",".join(self.candidate_case_ids) or None
        return row


async def unmatched_messages(settings: AuthSettings, *, limit: int) -> list[UnmatchedRow]:
    """The case service's `unmatched_messages`, read directly like the auth store (an operator's view)."""
    from services.case.store import UnmatchedStore  # the case service's collection; only this command needs it

    mongo = create_mongo_client(settings, app_name="caseflow-auth-admin")
    try:
        stored = await UnmatchedStore(mongo[settings.mongo_db]).newest(limit=limit)
    finally:
        await mongo.close()
    return [
        UnmatchedRow(
            message_id=message.message_id,
            reason=message.reason,
            from_address=message.from_address,
            subject=message.subject,
            thread_id=message.thread_id,
            received_at=message.received_at,
            candidate_case_ids=message.candidate_case_ids,
        )
        for message in stored
    ]


EXAMPLES = f"""examples:
  {PROG} create-client --name "Acme Corp" --plan pro
  {PROG} list-clients --format table
  {PROG} revoke-key key_...
  {PROG} usage --month 2025-06 --format table
  {PROG} parked list --format table
  {PROG} parked replay 42
  {PROG} unmatched list --format table
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage Caseflow clients and API keys, report their usage, and handle parked messages.\n"
        "Settings (MONGO_URL, MONGO_DB, "
        "NATS_URL, KEY_HASH_SECRET) come from the environment, as for the auth service.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json (the default, for scripts) or table (aligned columns, for people)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {
        name: commands.add_parser(name, help=summary, description=summary, parents=[output])
        for name, (summary, _) in COMMANDS.items()
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
    subparsers["usage"].add_argument(
        "--month", type=_usage_month, help="the UTC month as YYYY-MM (default: the current month)"
    )
    subparsers["usage"].add_argument("--client", dest="client_id", metavar="CLIENT", help="only this client (cli_...)")
    admin_parked.add_parser(commands, output)
    subparsers["unmatched"].add_argument("action", choices=("list",), help="list: the newest unmatched messages")
    subparsers["unmatched"].add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    return parser


def keys_change_of(result: Result) -> KeysChanged | None:
    """The broadcast a result calls for: gateways cache (client, key, plan), so only those changes count."""
    if isinstance(result, KeyState):
        return KeysChanged(client_id=result.client_id, key_id=result.key_id)
    if isinstance(result, ClientPlan):
        return KeysChanged(client_id=result.client_id)
    return None


@contextlib.asynccontextmanager
async def nats_connection(settings: CommonSettings) -> AsyncIterator[NatsClient]:
    """A short-lived NATS connection that gives up quickly (a CLI must not hang on a missing server), as the NATS
    user `admin` unless NATS_USER says otherwise (deploy/nats.conf lets it publish KEYS_CHANGED and ask billing)."""

    async def stay_quiet(_: Exception) -> None:
        # nats-py logs connection errors with a traceback by default; the caller reports the outcome.
        return None

    connection = await nats.connect(
        # NATS_URL names a cluster as a comma-separated list, as the services read it.
        **nats_connect_options(settings, ADMIN_NATS_USER),
        name="caseflow-auth-admin",
        connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.1,
        error_cb=stay_quiet,
    )
    try:
        yield connection
    finally:
        await connection.close()


async def broadcast_keys_changed(settings: CommonSettings, change: KeysChanged) -> bool:
    """Publish KEYS_CHANGED on core NATS; False when NATS cannot be reached."""
    try:
        async with asyncio.timeout(NATS_CONNECT_TIMEOUT_SECONDS * 2), nats_connection(settings) as connection:
            await connection.publish(
                KEYS_CHANGED, msgspec.json.encode(change), headers={"content-type": "application/json"}
            )
            await connection.flush()
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    return True


async def ask_billing_for_usage(settings: AuthSettings, query: GetUsageReport) -> UsageReport:
    """Billing's usage report; ServiceUnavailable when NATS or billing does not answer, AccountError when billing
    refuses the query."""
    try:
        async with (
            asyncio.timeout(NATS_CONNECT_TIMEOUT_SECONDS * 2 + settings.rpc_timeout_seconds),
            nats_connection(settings) as connection,
        ):
            answer = await connection.request(
                USAGE_REPORT,
                msgspec.json.encode(query),
                timeout=settings.rpc_timeout_seconds,
                headers={"content-type": "application/json"},
            )
    except nats.errors.NoRespondersError:
        raise ServiceUnavailable("the billing service is not running (nothing answers on NATS)") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ServiceUnavailable(
            f"the billing service did not answer within {settings.rpc_timeout_seconds:g} s"
        ) from None
    except (OSError, nats.errors.Error) as exc:
        raise ServiceUnavailable(f"NATS could not be reached at NATS_URL ({type(exc).__name__})") from None
    reply = msgspec.json.decode(answer.data, type=Ok[UsageReport] | Err)
    if isinstance(reply, Err):
        raise AccountError(f"billing refused the report: {reply.code}: {reply.message}")
    return reply.data


async def usage_report(admin: Admin, *, month: str | None, client_id: str | None) -> list[MonthlyUsage]:
    clients = await admin.accounts.clients_to_report(client_id)
    report = await ask_billing_for_usage(
        admin.settings,
        GetUsageReport(month=month, client_id=client_id, plans={client.client_id: client.plan for client in clients}),
    )
    return monthly_usage(clients, report)


def monthly_usage(clients: Sequence[Client], report: UsageReport) -> list[MonthlyUsage]:
    """Billing's rows (every client with a plan or a counter) with auth's names, in client id order."""
    names = {client.client_id: client.name for client in clients}
    return [
        MonthlyUsage(
            client_id=row.client_id,
            name=names.get(row.client_id),
            plan=row.plan,
            month=row.month,
            used=row.used,
            limit=row.limit,
            remaining=None if row.limit is None else max(row.limit - row.used, 0),
            plan_configured=row.plan_configured,
        )
        for row in report.clients
    ]


async def run_parked(settings: AuthSettings, args: argparse.Namespace) -> Result:
    try:
        async with nats_connection(settings) as connection:
            return await admin_parked.run(connection, args)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise ServiceUnavailable(f"NATS could not be reached at NATS_URL ({type(exc).__name__})") from None


async def run(settings: AuthSettings, args: argparse.Namespace) -> Result:
    if args.command == admin_parked.COMMAND:
        return await run_parked(settings, args)
    mongo = create_mongo_client(settings, app_name="caseflow-auth-admin")
    try:
        db = mongo[settings.mongo_db]
        # The CLI may run before the auth service ever started: the unique hash index must exist first.
        await ensure_indexes(db, INDEXES, attempts=1)
        accounts = Accounts(
            AuthStore(db, cipher=SecretCipher(settings.webhook_secret_keys)), key_hash_secret=settings.key_hash_secret
        )
        _, command = COMMANDS[args.command]
        result = await command(Admin(accounts=accounts, settings=settings), args)
    finally:
        await mongo.close()
    change = keys_change_of(result)
    if change is not None and not await broadcast_keys_changed(settings, change):
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
    except (AccountError, UndecryptableSecret) as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"{PROG} {args.command}: MongoDB failed: {type(exc).__name__} (check MONGO_URL)", file=sys.stderr)
        return 1
    except ServiceUnavailable as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    print(render(result, args.format))
    return 0


def render(result: Result, output_format: str) -> str:
    if output_format == "json":
        return msgspec.json.format(msgspec.json.encode(result), indent=2).decode()
    if isinstance(result, Output):
        # One record: a field per line.
        return table(["field", "value"], [[name, _cell(name, value)] for name, value in result.table_row().items()])
    rows = [item.table_row() for item in result]
    if not rows:
        return "(none)"
    header = list(rows[0])
    return table(header, [[_cell(name, row[name]) for name in header] for row in rows])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [list(header), *rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _cell(name: str, value: object) -> str:
    """Times (fields ending in At, Unix ms) in UTC ISO 8601, absent values as -."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and name.endswith("At"):
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


if __name__ == "__main__":
    sys.exit(main())

"""The admin CLI's `usage` report and `--format` option, as an operator runs them: a subprocess per command.

`usage` joins auth's clients (MongoDB) with billing's counters, asked over NATS: billing runs here as its real
handlers on a NATS server of this module's own (the session's server also carries the e2e stack, whose billing
answers the same subject from another database), with a settable clock so months are chosen by the test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from deploy.processes import NatsServer, free_port, private_nats_server
from services.auth.accounts import Accounts, MonthlyUsage, NewClient
from services.auth.admin import COMMANDS
from services.auth.store import AuthStore
from services.billing.domain import parse_plans
from services.billing.handlers import BillingApi, register
from services.billing.store import INDEXES, UsageStore
from shared.contracts.billing import RESERVE, USAGE_REPORT, GetUsageReport, Reservation, ReserveUnit, UsageReport
from shared.errors import ErrorCode, ServiceError
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.messaging.rpc import request
from shared.mongo import Document, ensure_indexes
from shared.settings import BillingSettings, load_settings
from shared.subjects import Service
from tests.integration.test_admin_cli import SECRET, admin
from tests.integration.test_billing_service import SettableClock
from tests.support.auth import TEST_CIPHER

PLANS = "tiny:10,free:100,unlimited:0"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Overrides the session's server for this module (and so `raw_broker` connects here)."""
    with private_nats_server(Path(tmp_path_factory.mktemp("admin-usage-nats"))) as server:
        yield server


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))


@pytest.fixture
def admin_env(nats_server: NatsServer, mongo_url: str, mongo_db: AsyncDatabase[Document]) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": nats_server.url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": mongo_db.name,
        "KEY_HASH_SECRET": SECRET,
        "RPC_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture
async def billing(
    nats_server: NatsServer, raw_broker: NatsBroker, mongo_db: AsyncDatabase[Document], clock: SettableClock
) -> AsyncIterator[NatsBroker]:
    """The billing service's handlers on the test database; yields a client broker to reserve units with."""
    settings = load_settings(BillingSettings, {"NATS_URL": nats_server.url, "PLANS": PLANS})
    await ensure_indexes(mongo_db, INDEXES)
    service = create_broker(settings, Service.BILLING)
    register(BillingApi(broker=service, store=UsageStore(mongo_db), plans=parse_plans(settings.plans), clock=clock))
    await service.start()
    await flush_to_server(service.connection)
    yield raw_broker
    await service.stop()


async def use_units(billing: NatsBroker, client: NewClient, plan: str, count: int) -> None:
    for _ in range(count):
        payload = ReserveUnit(client_id=client.client_id, plan=plan, reservation_id=os.urandom(8).hex())
        await request(billing, RESERVE, payload, Reservation, timeout=10)


def accounts_on(db: AsyncDatabase[Document]) -> Accounts:
    return Accounts(AuthStore(db, cipher=TEST_CIPHER), key_hash_secret=SECRET)


def table_rows(text: str) -> list[dict[str, str]]:
    """A `--format table` listing read back by its header: every value starts where its column's name does."""
    header, *lines = text.rstrip("\n").splitlines()
    names = header.split()
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return [
        {name: line[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)} for line in lines
    ]


def row(client: NewClient, name: str, plan: str, used: int, limit: int | None, month: str = "2026-01") -> Any:
    return {
        "clientId": client.client_id,
        "name": name,
        "plan": plan,
        "month": month,
        "used": used,
        "limit": limit,
        "remaining": None if limit is None else limit - used,
        "planConfigured": True,
    }


async def test_usage_reports_every_client_in_the_month_with_its_name_plan_and_limit(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document], billing: NatsBroker, clock: SettableClock
) -> None:
    accounts = accounts_on(mongo_db)
    acme = await accounts.create_client(name="Acme Corp", plan="tiny")
    idle = await accounts.create_client(name="Idle Ltd", plan="free")
    big = await accounts.create_client(name="Big Co", plan="unlimited")
    clock.now = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    await use_units(billing, acme, "tiny", 4)  # December: not January's
    clock.now = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    await use_units(billing, acme, "tiny", 3)
    await use_units(billing, big, "unlimited", 1)

    report = (await admin(admin_env, "usage", "--month", "2026-01")).json()

    assert report == sorted(
        [
            row(acme, "Acme Corp", "tiny", used=3, limit=10),
            row(idle, "Idle Ltd", "free", used=0, limit=100),
            row(big, "Big Co", "unlimited", used=1, limit=None),
        ],
        key=lambda entry: entry["clientId"],
    )
    december = (await admin(admin_env, "usage", "--month", "2025-12", "--client", acme.client_id)).json()
    assert december == [row(acme, "Acme Corp", "tiny", used=4, limit=10, month="2025-12")]


async def test_usage_without_a_month_is_billings_current_month(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document], billing: NatsBroker, clock: SettableClock
) -> None:
    acme = await accounts_on(mongo_db).create_client(name="Acme Corp", plan="tiny")
    clock.now = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    await use_units(billing, acme, "tiny", 2)
    assert (await admin(admin_env, "usage")).json() == [
        row(acme, "Acme Corp", "tiny", used=2, limit=10, month="2026-03")
    ]


async def test_a_plan_billing_does_not_configure_has_an_unknown_limit(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document], billing: NatsBroker
) -> None:
    gold = await accounts_on(mongo_db).create_client(name="Gold Inc", plan="gold")
    [entry] = (await admin(admin_env, "usage", "--month", "2026-01")).json()
    assert entry == {**row(gold, "Gold Inc", "gold", used=0, limit=None), "planConfigured": False}
    shown = await admin(admin_env, "usage", "--month", "2026-01", "--format", "table")
    assert "unknown plan" in shown.stdout


async def test_usage_as_a_table_has_a_header_and_a_row_per_client(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document], billing: NatsBroker
) -> None:
    accounts = accounts_on(mongo_db)
    acme = await accounts.create_client(name="Acme Corp", plan="tiny")
    big = await accounts.create_client(name="Big Co", plan="unlimited")
    await use_units(billing, acme, "tiny", 3)
    shown = await admin(admin_env, "usage", "--format", "table")
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split() == ["clientId", "name", "plan", "month", "used", "limit", "remaining"]
    rows = {entry["clientId"]: entry for entry in table_rows(shown.stdout)}
    assert rows == {
        acme.client_id: {
            "clientId": acme.client_id,
            "name": "Acme Corp",
            "plan": "tiny",
            "month": "2026-01",
            "used": "3",
            "limit": "10",
            "remaining": "7",
        },
        big.client_id: {
            "clientId": big.client_id,
            "name": "Big Co",
            "plan": "unlimited",
            "month": "2026-01",
            "used": "0",
            "limit": "unlimited",
            "remaining": "unlimited",
        },
    }


async def test_usage_for_an_unknown_client_or_a_bad_month_is_refused_in_one_line(
    admin_env: dict[str, str], billing: NatsBroker
) -> None:
    unknown = await admin(admin_env, "usage", "--client", "cli_nobody")
    assert (unknown.code, unknown.stdout) == (1, "")
    assert unknown.stderr.strip() == "python -m services.auth.admin usage: no client with id cli_nobody"
    for month in ("2026-13", "2026-1", "January"):
        refused = await admin(admin_env, "usage", "--month", month)
        assert refused.code == 2
        assert "YYYY-MM" in refused.stderr
        assert "Traceback" not in refused.stderr


async def test_usage_without_billing_or_without_nats_says_which_in_one_line(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    await accounts_on(mongo_db).create_client(name="Acme Corp", plan="tiny")
    no_billing = await admin(admin_env, "usage")  # NATS is up, nothing answers the report
    assert (no_billing.code, no_billing.stdout) == (1, "")
    assert "billing service is not running" in no_billing.stderr
    no_nats = await admin({**admin_env, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}, "usage")
    assert (no_nats.code, no_nats.stdout) == (1, "")
    assert "NATS could not be reached" in no_nats.stderr
    for refused in (no_billing, no_nats):
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "Traceback" not in refused.stderr


async def test_billing_refuses_a_report_for_a_malformed_month(billing: NatsBroker) -> None:
    with pytest.raises(ServiceError) as refused:
        await request(billing, USAGE_REPORT, GetUsageReport(month="2026-1"), UsageReport, timeout=10)
    assert refused.value.code is ErrorCode.INVALID_REQUEST


async def test_json_stays_the_default_and_table_is_for_people(
    admin_env: dict[str, str], mongo_db: AsyncDatabase[Document]
) -> None:
    accounts = accounts_on(mongo_db)
    acme = await accounts.create_client(name="Acme Corp", plan="pro")
    await accounts.revoke_key(acme.key_id)
    issued = await accounts.issue_key(acme.client_id)

    default, explicit = (
        await admin(admin_env, "list-clients"),
        await admin(admin_env, "list-clients", "--format", "json"),
    )
    assert default.json() == explicit.json()
    assert [client["clientId"] for client in default.json()] == [acme.client_id]

    listed = await admin(admin_env, "list-clients", "--format", "table")
    [shown] = table_rows(listed.stdout)
    assert list(shown) == ["clientId", "name", "plan", "createdAt", "updatedAt", "keys"]
    assert (shown["clientId"], shown["name"], shown["plan"]) == (acme.client_id, "Acme Corp", "pro")
    assert shown["keys"] == f"{acme.key_id} (revoked), {issued.key_id} (active)"
    # Times as UTC ISO 8601, not Unix ms.
    assert datetime.strptime(shown["createdAt"], "%Y-%m-%dT%H:%M:%SZ").year >= 2025

    created = await admin(admin_env, "create-client", "--name", "Table Co", "--plan", "free", "--format", "table")
    fields = dict(line.split(maxsplit=1) for line in created.stdout.strip().splitlines()[1:])
    assert set(fields) == {"clientId", "keyId", "apiKey", "webhookSecret"}
    assert fields["apiKey"].startswith("cf_live_")
    assert await accounts.is_usable_key(fields["apiKey"])


async def test_an_unknown_format_is_a_usage_error(admin_env: dict[str, str]) -> None:
    refused = await admin(admin_env, "list-clients", "--format", "xml")
    assert refused.code == 2
    assert "invalid choice: 'xml'" in refused.stderr


async def test_usage_and_the_format_option_document_themselves(admin_env: dict[str, str]) -> None:
    overview = await admin(admin_env, "--help")
    assert overview.code == 0
    assert "usage" in overview.stdout.split("examples:")[0]
    assert "usage --month" in overview.stdout
    usage_help = await admin(admin_env, "usage", "--help")
    assert usage_help.code == 0
    for option in ("--month", "--client", "--format {json,table}"):
        assert option in usage_help.stdout
    listed_help = await admin(admin_env, "list-clients", "--help")
    assert "--format {json,table}" in listed_help.stdout


def test_usage_prints_the_fields_its_help_promises() -> None:
    summary, _ = COMMANDS["usage"]
    promised = summary.split("[{")[1].split("}]")[0].split(", ")
    printed = msgspec.to_builtins(
        MonthlyUsage(
            client_id="c", name="n", plan="p", month="2026-01", used=0, limit=1, remaining=1, plan_configured=True
        )
    )
    assert promised == list(printed)

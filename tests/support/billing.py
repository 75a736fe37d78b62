"""The billing service in the test's own process, for tests of a service that reserves with it (creates)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Mapping

from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from services.billing.domain import parse_plans
from services.billing.handlers import BillingApi, register
from services.billing.store import INDEXES, UsageStore
from shared.messaging.broker import create_broker
from shared.messaging.connection import flush_to_server
from shared.mongo import Document, ensure_indexes
from shared.settings import BillingSettings, load_settings
from shared.subjects import Service


@contextlib.asynccontextmanager
async def billing_in_process(db: AsyncDatabase[Document], environ: Mapping[str, str]) -> AsyncIterator[NatsBroker]:
    """Billing on `db`, with the settings `environ` gives (NATS_URL at least), answering once this is entered."""
    settings = load_settings(BillingSettings, dict(environ))
    await ensure_indexes(db, INDEXES)
    broker = create_broker(settings, Service.BILLING)
    register(
        BillingApi(
            broker=broker,
            store=UsageStore(db),
            plans=parse_plans(settings.plans),
            clock=lambda: dt.datetime.now(dt.UTC),
        )
    )
    await broker.start()
    await flush_to_server(broker.connection)
    try:
        yield broker
    finally:
        await broker.stop()

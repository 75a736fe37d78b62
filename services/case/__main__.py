"""Case service: the case API (create, read, list, input, cancel, attachments), its outbox relay, and the
worker and scheduler that run each case."""

from __future__ import annotations

import datetime as dt

from services.case.handlers import CaseApi, register
from services.case.outbox import OutboxRelay
from services.case.store import INDEXES, CaseStore, IdempotencyStore
from shared.runtime import ServiceRuntime
from shared.settings import CaseSettings, load_settings_or_exit
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, CASE_EVENTS, Service


def main() -> None:
    settings = load_settings_or_exit(CaseSettings, Service.CASE)
    runtime = ServiceRuntime(
        Service.CASE, settings, streams=(CASE_COMMANDS, CASE_EVENTS, AGENTMAIL_EVENTS), indexes=INDEXES
    )
    store = CaseStore(runtime.db)
    relay = OutboxRelay(runtime.broker, store)
    register(
        CaseApi(
            broker=runtime.broker,
            store=store,
            idempotency=IdempotencyStore(runtime.db, ttl=dt.timedelta(hours=settings.idempotency_ttl_hours)),
            relay=relay,
            settings=settings,
        )
    )
    runtime.add_background_loop(relay.relay_forever)
    runtime.run()


if __name__ == "__main__":
    main()

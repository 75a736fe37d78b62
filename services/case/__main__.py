"""Case service: the case API (create, read, list, input, cancel, attachments), the worker that runs each
case (first email, follow-ups, replies, input), its scheduler, and the outbox relay."""

from __future__ import annotations

import datetime as dt

from services.case import handlers, worker
from services.case.agent.openai import OpenAIAgent
from services.case.agent.port import Agent
from services.case.agent.rules import RulesAgent
from services.case.outbox import OutboxRelay
from services.case.store import INDEXES, CaseStore, IdempotencyStore, UnmatchedStore
from services.case.timers import CaseTimers
from shared import metrics
from shared.runtime import ServiceRuntime
from shared.settings import CaseSettings, load_settings_or_exit
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, CASE_EVENTS, CASE_TIMERS, Service


def build_agent(settings: CaseSettings, runtime: ServiceRuntime) -> Agent:
    if settings.agent_backend == "rules":
        return RulesAgent()
    agent = OpenAIAgent(settings)
    # Closed after in-flight judgements finish, like the adapter's AgentMail client.
    runtime.add_shutdown_hook(agent.aclose)
    # In the background: a model that is away or refuses us shows in /readyz, it does not stop the service.
    runtime.add_background_loop(agent.probe_until_answered)
    return agent


def build(settings: CaseSettings) -> ServiceRuntime:
    """The service wired up and ready to run (also used to generate the AsyncAPI documents)."""
    runtime = ServiceRuntime(
        Service.CASE, settings, streams=(CASE_COMMANDS, CASE_EVENTS, AGENTMAIL_EVENTS, CASE_TIMERS), indexes=INDEXES
    )
    store = CaseStore(runtime.db)
    relay = OutboxRelay(runtime.broker, store)
    timers = CaseTimers(runtime.broker)
    handlers.register(
        handlers.CaseApi(
            broker=runtime.broker,
            store=store,
            idempotency=IdempotencyStore(
                runtime.db,
                ttl=dt.timedelta(hours=settings.idempotency_ttl_hours),
                takeover_grace_ms=int(settings.create_confirm_grace_seconds * 1000),
            ),
            relay=relay,
            settings=settings,
            timers=timers,
        )
    )
    case_worker = worker.Worker(
        broker=runtime.broker,
        store=store,
        relay=relay,
        agent=build_agent(settings, runtime),
        settings=settings,
        unmatched=UnmatchedStore(runtime.db),
        timers=timers,
    )
    worker.register(case_worker)
    runtime.add_background_loop(relay.relay_forever)
    runtime.add_background_loop(case_worker.schedule_forever)

    async def count_open_cases() -> None:
        for status, count in (await store.count_open_by_status()).items():
            metrics.CASES.labels(status=status).set(count)

    runtime.add_gauge_refresh(
        count_open_cases,
        every_seconds=settings.case_gauge_refresh_seconds,
        max_share=metrics.DATABASE_GAUGE_MAX_SHARE,
    )
    return runtime


def main() -> None:
    settings = load_settings_or_exit(CaseSettings, Service.CASE)
    build(settings).run()


if __name__ == "__main__":
    main()

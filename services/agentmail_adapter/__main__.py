"""AgentMail adapter: the only code that speaks AgentMail (sends, threads, attachments, inbound webhooks).

One AgentMail client (one httpx connection pool) per process, shared by every handler.
"""

from __future__ import annotations

from services.agentmail_adapter.client import AgentMailClient
from services.agentmail_adapter.handlers import AgentMailApi, register
from services.agentmail_adapter.store import INDEXES, MessageStore
from services.agentmail_adapter.webhooks import WebhookVerifier
from shared.runtime import ServiceRuntime
from shared.settings import AgentMailSettings, load_settings_or_exit
from shared.subjects import AGENTMAIL_EVENTS, Service


def build(settings: AgentMailSettings) -> ServiceRuntime:
    """The service wired up and ready to run (also used to generate the AsyncAPI documents)."""
    runtime = ServiceRuntime(Service.AGENTMAIL_ADAPTER, settings, streams=(AGENTMAIL_EVENTS,), indexes=INDEXES)
    mail = AgentMailClient(settings)
    register(
        AgentMailApi(
            broker=runtime.broker,
            mail=mail,
            store=MessageStore(runtime.db),
            verifier=WebhookVerifier(settings.agentmail_webhook_secret),
            settings=settings,
        )
    )
    # Closed after in-flight sends have finished, never under them.
    runtime.add_shutdown_hook(mail.aclose)
    return runtime


def main() -> None:
    settings = load_settings_or_exit(AgentMailSettings, Service.AGENTMAIL_ADAPTER)
    build(settings).run()


if __name__ == "__main__":
    main()

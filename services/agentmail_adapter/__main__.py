"""AgentMail adapter: the only code that speaks AgentMail (sends, threads, attachments, inbound webhooks)."""

from __future__ import annotations

from services.agentmail_adapter.store import INDEXES
from shared.runtime import ServiceRuntime
from shared.settings import AgentMailSettings, load_settings_or_exit
from shared.subjects import AGENTMAIL_EVENTS, Service


def main() -> None:
    settings = load_settings_or_exit(AgentMailSettings, Service.AGENTMAIL_ADAPTER)
    runtime = ServiceRuntime(
        Service.AGENTMAIL_ADAPTER, settings, streams=(AGENTMAIL_EVENTS,), indexes=INDEXES
    )
    runtime.run()


if __name__ == "__main__":
    main()

"""Case service: the case domain, its worker and scheduler."""

from __future__ import annotations

from services.case.store import INDEXES
from shared.runtime import ServiceRuntime
from shared.settings import CaseSettings, load_settings_or_exit
from shared.subjects import AGENTMAIL_EVENTS, CASE_COMMANDS, CASE_EVENTS, Service


def main() -> None:
    settings = load_settings_or_exit(CaseSettings, Service.CASE)
    runtime = ServiceRuntime(
        Service.CASE, settings, streams=(CASE_COMMANDS, CASE_EVENTS, AGENTMAIL_EVENTS), indexes=INDEXES
    )
    runtime.run()


if __name__ == "__main__":
    main()

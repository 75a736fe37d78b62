"""Auth service: clients, API keys (keyed hashes only) and webhook signing secrets."""

from __future__ import annotations

from services.auth.store import INDEXES
from shared.runtime import ServiceRuntime
from shared.settings import AuthSettings, load_settings_or_exit
from shared.subjects import Service


def main() -> None:
    settings = load_settings_or_exit(AuthSettings, Service.AUTH)
    runtime = ServiceRuntime(Service.AUTH, settings, indexes=INDEXES)
    runtime.run()


if __name__ == "__main__":
    main()

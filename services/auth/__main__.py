"""Auth service: clients, API keys (keyed hashes only) and webhook signing secrets.

It answers VERIFY_KEY and WEBHOOK_SECRET; clients and keys are changed by the admin CLI
(`python -m services.auth.admin`), which also broadcasts KEYS_CHANGED to the gateways.
"""

from __future__ import annotations

from services.auth.handlers import AuthApi, register
from services.auth.secrets import SecretCipher
from services.auth.store import INDEXES, AuthStore
from shared.runtime import ServiceRuntime
from shared.settings import AuthSettings, load_settings_or_exit
from shared.subjects import Service


def build(settings: AuthSettings) -> ServiceRuntime:
    """The service wired up and ready to run (also used to generate the AsyncAPI documents)."""
    runtime = ServiceRuntime(Service.AUTH, settings, indexes=INDEXES)
    register(
        AuthApi(
            broker=runtime.broker,
            store=AuthStore(runtime.db, cipher=SecretCipher(settings.webhook_secret_keys)),
            key_hash_secret=settings.key_hash_secret,
        )
    )
    return runtime


def main() -> None:
    settings = load_settings_or_exit(AuthSettings, Service.AUTH)
    build(settings).run()


if __name__ == "__main__":
    main()

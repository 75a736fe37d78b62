"""Webhook service: signed, retried, recorded deliveries of case events to client endpoints."""

from __future__ import annotations

from services.webhook.store import INDEXES
from shared.runtime import ServiceRuntime
from shared.settings import WebhookSettings, load_settings_or_exit
from shared.subjects import CASE_EVENTS, Service


def main() -> None:
    settings = load_settings_or_exit(WebhookSettings, Service.WEBHOOK)
    runtime = ServiceRuntime(Service.WEBHOOK, settings, streams=(CASE_EVENTS,), indexes=INDEXES)
    runtime.run()


if __name__ == "__main__":
    main()

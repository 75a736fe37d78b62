"""Webhook service: signed, retried, recorded deliveries of case events to client endpoints.

Case events are stored as deliveries by the durable consumer (handlers.py) and sent by the dispatcher loop
(dispatcher.py); the gateway reads the delivery log and asks for redeliveries over request/reply.
"""

from __future__ import annotations

from services.webhook.dispatcher import Dispatcher
from services.webhook.handlers import WebhookApi, register
from services.webhook.sender import WebhookSender
from services.webhook.signing import SigningSecrets
from services.webhook.store import INDEXES, DeliveryStore
from shared.runtime import ServiceRuntime
from shared.settings import WebhookSettings, load_settings_or_exit
from shared.subjects import CASE_EVENTS, Service


def build(settings: WebhookSettings) -> ServiceRuntime:
    """The service wired up and ready to run (also used to generate the AsyncAPI documents)."""
    runtime = ServiceRuntime(Service.WEBHOOK, settings, streams=(CASE_EVENTS,), indexes=INDEXES)
    store = DeliveryStore(runtime.db)
    dispatcher = Dispatcher(
        store=store,
        secrets=SigningSecrets(runtime.broker, timeout_seconds=settings.rpc_timeout_seconds),
        sender=WebhookSender(
            timeout_seconds=settings.webhook_timeout_seconds, allow_private=settings.webhook_allow_private
        ),
        schedule=settings.webhook_retry_schedule_seconds,
        lease_seconds=settings.webhook_claim_lease_seconds,
        poll_seconds=settings.webhook_poll_seconds,
        concurrency=settings.webhook_concurrency,
        drain_seconds=settings.shutdown_grace_seconds,
    )
    register(WebhookApi(broker=runtime.broker, store=store, dispatcher=dispatcher, settings=settings))
    runtime.add_background_loop(dispatcher.deliver_forever)
    return runtime


def main() -> None:
    settings = load_settings_or_exit(WebhookSettings, Service.WEBHOOK)
    build(settings).run()


if __name__ == "__main__":
    main()

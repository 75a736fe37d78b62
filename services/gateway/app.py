"""The gateway's Litestar application: the only HTTP ingress.

`create_app` builds the app around a broker and settings; `__main__` serves it with uvicorn. The returned
ASGI callable is the Litestar app wrapped in `RequestIdGuard`, so every response, routed or not, carries
`X-Request-Id` and an envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faststream.nats import NatsBroker
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler
from nats.js.kv import KeyValue

from services.gateway.admission import AdmissionMiddleware, InFlightLimits
from services.gateway.auth import KeyCache
from services.gateway.client_address import TrustedProxies
from services.gateway.console.render import console_templates
from services.gateway.context import GatewayContext
from services.gateway.errors import ErrorResponder
from services.gateway.guards import FAILED_AUTH, add_rate_limit_headers
from services.gateway.memo import Memo
from services.gateway.request_id import RequestIdGuard
from services.gateway.routes import ROUTES
from services.gateway.routes.docs import ReferenceRenderPlugin, schema_router
from services.gateway.shared_throttle import SharedKeyThrottle, open_throttle_bucket
from services.gateway.throttle import KeyThrottle, LocalKeyThrottle, RateLimit, Throttle
from shared.contracts.auth import KEYS_CHANGED, KeysChanged
from shared.messaging.connection import connect_with_retry, nats_client
from shared.messaging.rpc import RpcClient
from shared.mongo import create_mongo_client
from shared.runtime import VERSION
from shared.settings import GatewaySettings

log = logging.getLogger("caseflow.gateway")


def _reconnects(broker: NatsBroker) -> int:
    client = nats_client(broker)
    return int(client.stats["reconnects"]) if client else 0


def _key_throttle(settings: GatewaySettings, broker: NatsBroker, local: Throttle) -> KeyThrottle:
    if settings.throttle_store == "local":
        return LocalKeyThrottle(local)

    async def open_bucket() -> KeyValue:
        client = nats_client(broker)
        if client is None:
            raise ConnectionError("not connected to NATS yet")
        return await open_throttle_bucket(
            client, timeout_seconds=settings.throttle_store_timeout_seconds, replicas=settings.stream_replicas
        )

    return SharedKeyThrottle(local.limits, open_bucket=open_bucket, fallback=local)


def create_litestar(
    settings: GatewaySettings,
    broker: NatsBroker,
    *,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    local_throttle = Throttle(
        limits={
            "create": RateLimit.parse(settings.rate_limit_create),
            "default": RateLimit.parse(settings.rate_limit_default),
            FAILED_AUTH: RateLimit.parse(settings.rate_limit_failed_auth),
        }
    )
    gateway = GatewayContext(
        settings=settings,
        broker=broker,
        rpc=RpcClient(broker, settings.rpc_timeout_seconds),
        mongo=create_mongo_client(settings, app_name="caseflow-gateway"),
        key_cache=KeyCache(ttl_seconds=settings.auth_cache_seconds, epoch=lambda: _reconnects(broker)),
        throttle=local_throttle,
        key_throttle=_key_throttle(settings, broker, local_throttle),
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
        readiness=Memo(ttl_seconds=settings.readyz_cache_seconds),
    )

    @broker.subscriber(KEYS_CHANGED)
    async def evict_changed_keys(change: KeysChanged) -> None:
        # Every gateway hears this (no queue group): a revoked key stops working everywhere at once.
        evicted = gateway.key_cache.evict(client_id=change.client_id, key_id=change.key_id)
        log.info("evicted cached API keys", extra={"evicted": evicted, "key_id": change.key_id})

    async def start_broker() -> None:
        await connect_with_retry(broker)
        await broker.start()

    async def stop() -> None:
        await broker.stop()
        await gateway.mongo.close()

    return Litestar(
        route_handlers=[*ROUTES, *extra_route_handlers],
        state=State({"gateway": gateway}),
        dependencies={"gateway": Provide(lambda: gateway, sync_to_thread=False)},
        exception_handlers=ErrorResponder(retry_after_seconds=settings.retry_after_seconds).handlers(),
        before_send=[add_rate_limit_headers],
        middleware=[
            AdmissionMiddleware(
                InFlightLimits({"create": settings.max_in_flight_create, "default": settings.max_in_flight_default})
            )
        ],
        request_max_body_size=settings.max_body_bytes,
        template_config=console_templates(),
        on_startup=[start_broker],
        on_shutdown=[stop],
        openapi_config=OpenAPIConfig(
            title="Caseflow API",
            version=VERSION,
            description="Delegate an email follow-up task to an agent. Every response uses the "
            '`{"ok": true, "data": ...}` / `{"ok": false, "error": {"code", "message"}}` envelope.',
            path="/schema",
            render_plugins=[ReferenceRenderPlugin()],
            openapi_router=schema_router("/schema"),
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="apiKey",
                        name="x-api-key",
                        security_scheme_in="header",
                        description="Your API key.",
                    )
                }
            ),
        ),
        debug=False,
        logging_config=None,
    )


def create_app(
    settings: GatewaySettings,
    broker: NatsBroker,
    *,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Any:
    return RequestIdGuard(
        create_litestar(settings, broker, extra_route_handlers=extra_route_handlers),
        max_header_bytes=settings.max_header_bytes,
        body_read_timeout_seconds=settings.body_read_timeout_seconds,
    )

"""Gateway process: Litestar served by uvicorn; SIGTERM finishes in-flight requests, then stops the broker.

Its Prometheus metrics are served on METRICS_PORT by the exporter's own thread, never on the public API port.
"""

from __future__ import annotations

import functools

import uvicorn

from services.gateway.app import create_app
from services.gateway.http_protocol import ConnectionLimits, EnvelopeHttpProtocol
from shared.event_loop import run_main
from shared.logs import configure_logging
from shared.messaging.broker import create_broker
from shared.metrics import serve_metrics_or_exit
from shared.runtime import VERSION
from shared.settings import GatewaySettings, load_settings_or_exit, secret_values
from shared.subjects import Service


def main() -> None:
    settings = load_settings_or_exit(GatewaySettings, Service.GATEWAY)
    configure_logging(Service.GATEWAY, settings.log_level, secrets=secret_values(settings))
    serve_metrics_or_exit(settings.metrics_port, service=Service.GATEWAY, version=VERSION)
    broker = create_broker(settings, Service.GATEWAY)
    config = uvicorn.Config(
        create_app(settings, broker),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For is believed only from TRUSTED_PROXIES (client_address.py): uvicorn's own proxy-headers
        # middleware would also believe it from 127.0.0.1, ahead of that rule, on every request.
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        http=functools.partial(  # type: ignore[arg-type]
            EnvelopeHttpProtocol,
            limits=ConnectionLimits(
                header_read_timeout_seconds=settings.header_read_timeout_seconds,
                max_connections=settings.max_connections,
                retry_after_seconds=settings.retry_after_seconds,
                # Headers beyond this size are refused (400, enveloped) instead of buffered.
                max_header_bytes=settings.max_header_bytes,
            ),
        ),
    )
    run_main(uvicorn.Server(config).serve(), event_loop=settings.event_loop)


if __name__ == "__main__":
    main()

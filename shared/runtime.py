"""The process shell every backend service runs in (Temporal's `worker.py`, for our services).

Start-up order: settings are already parsed (a bad value has exited), logging is configured, NATS is
connected (waiting for it if it starts after us), streams and indexes are declared idempotently, subscribers
start, then background loops (scheduler, outbox relay) start. On SIGTERM or SIGINT the background loops are
cancelled, every request/reply subscription leaves its queue group and answers what it was already given
(`stop_answering_requests`), the broker stops taking messages and waits up to SHUTDOWN_GRACE_SECONDS for
in-flight handlers, then connections close.

Probes: with HEALTH_PORT set, `shared.health_http` answers /livez and /readyz for this process (Kubernetes);
/readyz says NATS is `starting` until the server holds this process's subscriptions (`flush_to_server`).

Metrics: with METRICS_PORT set, the Prometheus exporter starts first (a service still waiting for NATS can be
scraped) and stops last; every durable consumer's lag is refreshed into gauges by a background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence

import nats.errors
from faststream import FastStream
from pymongo import IndexModel

from shared import metrics
from shared.classify import broker_unavailable
from shared.clock import now_ms
from shared.contracts.health import HealthReport
from shared.contracts.rpc import Empty, Ok
from shared.event_loop import run_main
from shared.failures import DEPENDENCY_PROBLEMS
from shared.health_http import HealthServer
from shared.logs import configure_logging
from shared.messaging.broker import create_broker, stop_answering_requests
from shared.messaging.connection import connect_with_retry, flush_to_server, nats_client, nats_credentials
from shared.messaging.jetstream import durable_consumers, ensure_streams
from shared.messaging.responder import rpc_subscriber
from shared.mongo import create_mongo_client, ensure_indexes, ping
from shared.settings import CommonSettings, secret_values
from shared.subjects import Service, StreamSpec, health_subject, queue_group

VERSION = "0.1.0"

type BackgroundLoop = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(
        self,
        service: Service,
        settings: CommonSettings,
        *,
        streams: Sequence[StreamSpec] = (),
        indexes: Mapping[str, Sequence[IndexModel]] | None = None,
    ) -> None:
        # The NATS password is redacted even when it is the development one derived from the service's name.
        nats_password = nats_credentials(settings, str(service))[1]
        configure_logging(service, settings.log_level, secrets=[*secret_values(settings), nats_password])
        self.service = service
        self.settings = settings
        self.log = logging.getLogger(f"caseflow.{service}")
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = now_ms()
        self.broker = create_broker(settings, service)
        self.mongo = create_mongo_client(settings, app_name=f"caseflow-{service}")
        self.db = self.mongo[settings.mongo_db]
        self._streams = tuple(streams)
        self._indexes = dict(indexes or {})
        self._loops: list[BackgroundLoop] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics: metrics.MetricsServer | None = None
        self._health: HealthServer | None = None
        # Set once nats-server holds this process's subscriptions (after the broker started).
        self._subscribed = False
        self._register_health()
        self.add_gauge_refresh(self._refresh_consumer_gauges)

    def _register_health(self) -> None:
        @rpc_subscriber(self.broker, health_subject(self.service), queue=queue_group(self.service))
        async def health(_: Empty) -> Ok[HealthReport]:
            mongo_ok = await ping(self.mongo, timeout_seconds=1.0)
            self.log.debug("health reported", extra={"mongodb": mongo_ok})
            return Ok(
                HealthReport(
                    service=self.service,
                    instance=self.instance,
                    version=VERSION,
                    started_at=self.started_at,
                    mongodb="ok" if mongo_ok else "down",
                    problems=DEPENDENCY_PROBLEMS.current(),
                )
            )

    def add_background_loop(self, loop: BackgroundLoop) -> None:
        """Run `loop` after start-up until shutdown; it is restarted if it crashes."""
        self._loops.append(loop)

    def add_gauge_refresh(
        self,
        refresh: Callable[[], Awaitable[None]],
        *,
        every_seconds: float = metrics.GAUGE_REFRESH_SECONDS,
        max_share: float = 1.0,
    ) -> None:
        """Run `refresh` (it sets gauges from NATS or MongoDB) every `every_seconds`, or less often when it takes
        more than `max_share` of that (see `metrics.refresh_forever`), if metrics are on."""
        if not self.settings.metrics_port:
            return

        async def refresh_gauges() -> None:
            await metrics.refresh_forever(refresh, every_seconds=every_seconds, max_share=max_share)

        self.add_background_loop(refresh_gauges)

    async def _refresh_consumer_gauges(self) -> None:
        js = self.broker.connection.jetstream()
        for consumer in durable_consumers(self.broker):
            info = await js.consumer_info(consumer.stream, consumer.durable, timeout=self.settings.rpc_timeout_seconds)
            metrics.observe_consumer(
                stream=consumer.stream,
                consumer=consumer.durable,
                pending=info.num_pending or 0,
                ack_pending=info.num_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
            )

    def add_shutdown_hook(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close` once in-flight messages are done (e.g. close an HTTP client the handlers use)."""
        self._closers.append(close)

    async def _readiness(self) -> dict[str, str]:
        """This process's own connections, for its HEALTH_PORT /readyz."""
        client = nats_client(self.broker)
        connected = client is not None and client.is_connected
        nats_state = ("ok" if self._subscribed else "starting") if connected else "down"
        mongo_ok = await ping(self.mongo, timeout_seconds=1.0)
        return {"nats": nats_state, "mongodb": "ok" if mongo_ok else "down"}

    async def _startup(self) -> None:
        if self.settings.health_port:
            # Before NATS: a process still waiting for it is alive (livez) but not ready (readyz).
            self._health = HealthServer(self.service, self._readiness)
            await self._health.start(self.settings.health_port)
        await connect_with_retry(self.broker)
        await self._declare_streams_with_retry()
        await ensure_indexes(self.db, self._indexes)

    async def _declare_streams_with_retry(self, *, attempts: int = 60, delay_seconds: float = 1.0) -> None:
        """A JetStream cluster that is still electing its leaders (all nodes just started, or one just died)
        times out or has no responder for a while: wait it out instead of exiting at start-up."""
        for attempt in range(1, attempts + 1):
            try:
                await ensure_streams(self.broker, self._streams, replicas=self.settings.stream_replicas)
            except Exception as exc:
                if attempt == attempts or not (broker_unavailable(exc) or isinstance(exc, TimeoutError)):
                    raise
                self.log.warning(
                    "JetStream not ready to declare streams; retrying",
                    extra={"error": type(exc).__name__, "attempt": attempt},
                )
                await asyncio.sleep(delay_seconds)
            else:
                return

    async def _start_loops(self) -> None:
        # Ready only once the server holds this process's subscriptions: before that its requests find no
        # responder here, and a rolling update that counted it ready could already retire the old replica.
        try:
            await flush_to_server(self.broker.connection)
        except (TimeoutError, nats.errors.Error) as exc:
            # NATS went away right after start: nats-py subscribes again when it is back.
            self.log.warning("could not confirm subscriptions with NATS", extra={"error": type(exc).__name__})
        self._subscribed = True
        self._tasks = [asyncio.create_task(self._supervise(loop)) for loop in self._loops]
        self.log.info("service started", extra={"instance": self.instance})

    async def _supervise(self, loop: BackgroundLoop) -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("background loop crashed; restarting", extra={"loop": loop.__name__})
                await asyncio.sleep(1.0)
            else:
                return

    async def _stop_loops(self) -> None:
        self.log.info("service stopping")
        # First, so the other replicas take new requests while this one finishes what it was given.
        await stop_answering_requests(self.broker, timeout=self.settings.shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close(self) -> None:
        for close in self._closers:
            try:
                await close()
            except Exception:
                self.log.exception("shutdown hook failed")
        await self.mongo.close()
        if self._health is not None:
            await self._health.close()
        if self._metrics is not None:
            await self._metrics.close()
        self.log.info("service stopped")

    def run(self) -> None:
        self._metrics = metrics.serve_metrics_or_exit(self.settings.metrics_port, service=self.service, version=VERSION)
        app = FastStream(
            self.broker,
            logger=self.log,
            on_startup=[self._startup],
            after_startup=[self._start_loops],
            on_shutdown=[self._stop_loops],
            after_shutdown=[self._close],
        )
        run_main(app.run(log_level=logging.INFO), event_loop=self.settings.event_loop)

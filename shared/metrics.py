"""Every Prometheus metric Caseflow exports, defined once, and the exporter each process serves them with.

Design decisions a reader must know:
- Labels take bounded values only: subject constants, route templates, error codes, plans, statuses. Never an
  id, a raw path or a client's name, so a hostile or busy client cannot blow up the number of series.
- Each process exports prometheus_client's default registry on its own port (METRICS_PORT, 0 = off). Prometheus
  adds `job` and `instance` to every series it scrapes, so metrics carry no service label; only
  `caseflow_service_info` names the service, for a scrape without Prometheus (`curl :9101/metrics`).
- Counters and histograms are updated where things happen. Gauges that need I/O (JetStream consumer lag every
  GAUGE_REFRESH_SECONDS, open cases by status every CASE_GAUGE_REFRESH_SECONDS) are refreshed by a background
  loop: the exporter answers scrapes from its own thread, which cannot await NATS or MongoDB. With several
  replicas each reports the same global number (aggregate with `max`, not `sum`).
- A gauge counts only what is bounded by the work in progress: finished cases are history, ever growing, so they
  are a counter of the cases this process finished (`sum` across replicas), not a count of the collection.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

from shared.contracts.case import CMD_CREATED

log = logging.getLogger("caseflow.metrics")

# The exporter listens on every interface: Prometheus scrapes from another host or container. Metrics hold no
# secrets and no client data (see the labels above).
METRICS_ADDRESS: Final = "0.0.0.0"
GAUGE_REFRESH_SECONDS: Final = 5.0
# After a count from MongoDB that took t seconds, a gauge waits at least t / this before counting again (50 t),
# so counting takes at most ~2 % of the database's time however many cases there are: on the embedded server a
# count costs one read per matching case and holds every other command meanwhile.
DATABASE_GAUGE_MAX_SHARE: Final = 0.02
# From a health check (milliseconds) to an email send that waits out AgentMail's Retry-After (tens of seconds).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# ---- every process --------------------------------------------------------------------------------------------

SERVICE_INFO: Final = Info("caseflow_service", "The Caseflow service this process runs, and its version.")

# Outcomes of a handled NATS message besides an error code (the registry's code is the outcome of a failed RPC).
OUTCOME_OK: Final = "ok"
# A JetStream message whose handler failed and that will be redelivered after a backoff.
OUTCOME_RETRIED: Final = "retried"
# A JetStream message moved to the PARKED stream after its last allowed delivery (or a permanent failure).
OUTCOME_PARKED: Final = "parked"
# A JetStream message its handler terminated itself (not parked).
OUTCOME_REJECTED: Final = "rejected"
# A request answered 503 without running its handler: its deadline had passed while it queued.
OUTCOME_SHED: Final = "shed"

NATS_MESSAGES: Final = Counter(
    "caseflow_nats_messages",
    "NATS messages handled (requests, commands, events), by subject and outcome: ok, an error code, retried or parked.",
    ["subject", "outcome"],
)
NATS_MESSAGE_SECONDS: Final = Histogram(
    "caseflow_nats_message_duration_seconds",
    "Time to handle one NATS message, by subject and outcome.",
    ["subject", "outcome"],
    buckets=LATENCY_BUCKETS,
)

CONSUMER_PENDING: Final = Gauge(
    "caseflow_jetstream_consumer_pending_messages",
    "Messages in the stream not yet delivered to the durable consumer (its lag).",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING: Final = Gauge(
    "caseflow_jetstream_consumer_ack_pending_messages",
    "Messages delivered to the durable consumer and not yet acknowledged (being handled, or lost with a crash).",
    ["stream", "consumer"],
)
CONSUMER_REDELIVERED: Final = Gauge(
    "caseflow_jetstream_consumer_redelivered_messages",
    "Messages the durable consumer has outstanding that were delivered more than once.",
    ["stream", "consumer"],
)
MESSAGES_PARKED: Final = Counter(
    "caseflow_messages_parked",
    "JetStream messages moved to the PARKED stream (poison: undecodable, contract-violating, a bug, a permanent "
    "failure), by the stream and durable consumer they were parked from.",
    ["stream", "consumer"],
)

# ---- gateway ----------------------------------------------------------------------------------------------------

# The route label of a request that matched no route (404, and 405 for a known path): never the raw path.
UNMATCHED_ROUTE: Final = "unmatched"
# The status label of a request that ended without a response (the client went away first).
NO_RESPONSE: Final = "none"
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "OTHER"

HTTP_REQUESTS: Final = Counter(
    "caseflow_http_requests",
    "HTTP requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS: Final = Histogram(
    "caseflow_http_request_duration_seconds",
    "Time from a request's arrival at the gateway to the end of its response, by route template, method and status.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)

# ---- case ---------------------------------------------------------------------------------------------------------

DEPENDENCY_MISCONFIGURED: Final = Gauge(
    "caseflow_dependency_misconfigured",
    "1 while a dependency refuses this process's own configuration or credentials (the service reports not ready).",
    ["dependency"],
)
SHED_REQUESTS: Final = Counter(
    "caseflow_gateway_shed_requests_total",
    "Requests answered 503 at once because their route class was at its in-flight bound (admission control).",
    ["route_class"],
)
# reason: "unavailable" (the shared store failed; decided by the gateway's own buckets) or "contended" (every
# compare-and-set lost to another gateway; refused).
THROTTLE_STORE_FALLBACKS: Final = Counter(
    "caseflow_gateway_throttle_store_fallbacks_total",
    "Throttle decisions the shared NATS KV store could not make, by reason.",
    ["reason"],
)
CASES: Final = Gauge(
    "caseflow_cases", "Open cases (CREATED, RUNNING, INPUT_NEEDED) by status, all clients.", ["status"]
)
CASES_FINISHED: Final = Counter(
    "caseflow_cases_finished",
    "Cases this process moved to a terminal status (COMPLETED, FAILED, CANCELLED), by that status.",
    ["status"],
)
TIMER_ARM_FAILURES: Final = Counter(
    "caseflow_case_timer_arm_failures",
    "Case timers that could not be armed on JetStream after a write (the scheduler's safety scan covers them).",
)
RPC_SHED_REQUESTS: Final = Counter(
    "caseflow_rpc_shed_requests",
    "Requests a service answered 503 at once because their handler was at RPC_MAX_IN_FLIGHT, by subject.",
    ["subject"],
)
DEADLINE_DROPS: Final = Counter(
    "caseflow_deadline_drops",
    "Requests dropped before committing anything because the asker's deadline had passed, by subject.",
    ["subject"],
)
RECONCILER_REPAIRS: Final = Counter(
    "caseflow_reconciler_repairs",
    "Steps the scheduler requested again because they outlived their lease, by kind (see lifecycle.REPAIR_KINDS).",
    ["kind"],
)
UNMATCHED_MESSAGES: Final = Counter(
    "caseflow_unmatched_messages",
    "Inbound messages stored as unmatched (no case, or several open cases of the sender), by reason.",
    ["reason"],
)

# ---- agentmail_adapter ------------------------------------------------------------------------------------------

# kind: "send" (a first email, a new thread) or "reply" (in a case's thread). outcome: "sent" (AgentMail accepted
# it), "rejected" (AgentMail refused the recipient), "failed" (AgentMail unavailable or erroring), "repeated" (the
# attempt was sent before; answered from the store, nothing emailed).
EMAILS_SENT: Final = Counter(
    "caseflow_emails_sent",
    "Emails the adapter was asked to send, by kind (send, reply) and outcome (sent, rejected, failed, repeated).",
    ["kind", "outcome"],
)

# ---- webhook --------------------------------------------------------------------------------------------------------

# result: "delivered" (2xx), "failed" (no answer or another status; retried while the schedule lasts), "gone"
# (410: the client asked us to stop), "refused" (the SSRF guard or auth refused it; nothing was sent).
WEBHOOK_ATTEMPTS: Final = Counter(
    "caseflow_webhook_attempts",
    "Client webhook delivery attempts, by result (delivered, failed, gone, refused).",
    ["result"],
)

# ---- billing --------------------------------------------------------------------------------------------------------

# outcome: "granted" (a unit counted), "repeated" (the reservation id was counted before), "refused" (the plan's
# monthly cap is reached). Requests naming a plan PLANS does not configure show as FORBIDDEN on billing.rpc.reserve.
USAGE_RESERVATIONS: Final = Counter(
    "caseflow_usage_reservations",
    "Case unit reservations (one per case created), by plan and outcome (granted, repeated, refused).",
    ["plan", "outcome"],
)
USAGE_RELEASES: Final = Counter(
    "caseflow_usage_releases",
    "Reserved case units given back because the case could not be created.",
)


# Subjects with an id as their last token (`case.cmd.created.<caseId>`) are counted under their wildcard, so
# the number of series stays bounded.
_PER_ID_SUBJECTS: Final = (CMD_CREATED,)


def bounded_subject(subject: str) -> str:
    for pattern in _PER_ID_SUBJECTS:
        if subject.startswith(pattern.removesuffix("*")):
            return pattern
    return subject


def observe_message(subject: str, outcome: str, seconds: float) -> None:
    subject = bounded_subject(subject)
    NATS_MESSAGES.labels(subject=subject, outcome=outcome).inc()
    NATS_MESSAGE_SECONDS.labels(subject=subject, outcome=outcome).observe(seconds)


def observe_http_request(*, route: str | None, method: str, status: int | None, seconds: float) -> None:
    labels = {
        "route": route or UNMATCHED_ROUTE,
        "method": method if method in HTTP_METHODS else OTHER_METHOD,
        "status": str(status) if status is not None else NO_RESPONSE,
    }
    HTTP_REQUESTS.labels(**labels).inc()
    HTTP_REQUEST_SECONDS.labels(**labels).observe(seconds)


def observe_consumer(*, stream: str, consumer: str, pending: int, ack_pending: int, redelivered: int) -> None:
    CONSUMER_PENDING.labels(stream=stream, consumer=consumer).set(pending)
    CONSUMER_ACK_PENDING.labels(stream=stream, consumer=consumer).set(ack_pending)
    CONSUMER_REDELIVERED.labels(stream=stream, consumer=consumer).set(redelivered)


@dataclass
class MetricsServer:
    """The exporter's HTTP server (a daemon thread answering `GET /metrics`)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    async def close(self) -> None:
        # shutdown() waits for the serving thread to notice; keep the event loop free meanwhile.
        await asyncio.to_thread(self.server.shutdown)
        self.server.server_close()


def serve_metrics_or_exit(port: int, *, service: str, version: str) -> MetricsServer | None:
    """Start the exporter on `port` (None when METRICS_PORT is 0); a port that cannot be bound stops the process
    with a message naming METRICS_PORT, like any other bad setting."""
    SERVICE_INFO.info({"service": service, "version": version})
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=METRICS_ADDRESS)
    except OSError as exc:
        print(f"caseflow {service}: invalid setting METRICS_PORT: cannot listen on {port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("metrics exported", extra={"metrics_port": port})
    return MetricsServer(server, thread)


async def refresh_forever(
    refresh: Callable[[], Awaitable[None]],
    *,
    every_seconds: float,
    max_share: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run `refresh` now and then every `every_seconds`, or longer: after a refresh that took `t` seconds the
    next waits at least `t / max_share`, so refreshing takes at most `max_share` of the time. A failed refresh
    (NATS or MongoDB away) keeps the last values and is tried again, since a gauge is not worth crashing or
    flooding the log for."""
    failing = False
    while True:
        started = clock()
        try:
            await refresh()
        except Exception as exc:
            if not failing:
                log.warning("metrics refresh failed; retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
            failing = True
        else:
            failing = False
        await sleep(max(every_seconds, (clock() - started) / max_share))

"""Admission control inside a service: a bound on the requests each RPC handler of this process has in flight.

In flight means admitted: running (at most the handler's `concurrency`, declared with it) or waiting for a
turn. When a handler has RPC_MAX_IN_FLIGHT in flight, the next request is answered at once with 503
SERVICE_UNAVAILABLE and `retry_after_seconds` (RPC_SHED_RETRY_AFTER_SECONDS, which the gateway sends as its HTTP
Retry-After), instead of queueing until its asker's RPC timeout. A request whose deadline passed while it waited
for its turn is dropped when its turn comes, before it runs.

Design decision a reader must know: the decision is taken in nats-py's delivery callback, before the request
gets a task (shared.messaging.responder), so no queue of requests forms anywhere the bound does not see: not in
nats-py, not in a worker pool. This module holds the bookkeeping; the responder applies it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from shared import metrics
from shared.contracts.rpc import Err
from shared.errors import ErrorCode
from shared.settings import CommonSettings

log = logging.getLogger("caseflow.admission")

SHED_MESSAGE: Final = "The service is at capacity; retry after the time in Retry-After."


@dataclass(slots=True)
class HandlerBounds:
    """One broker's bound per RPC handler and what each has in flight (one event loop: no lock)."""

    max_in_flight: int
    retry_after_seconds: int
    in_flight: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> HandlerBounds:
        return cls(settings.rpc_max_in_flight, settings.rpc_shed_retry_after_seconds)

    def shed_reply(self, subject: str) -> Err:
        metrics.RPC_SHED_REQUESTS.labels(subject=metrics.bounded_subject(subject)).inc()
        log.info("request shed: its handler is at its in-flight bound", extra={"subject": subject})
        return Err(
            code=ErrorCode.SERVICE_UNAVAILABLE,
            message=SHED_MESSAGE,
            kind="transient",
            retry_after_seconds=self.retry_after_seconds,
        )

"""Which exceptions are an outage: MongoDB or NATS away, classified once for replies, redeliveries and retries.

Design decision: the kind a failure has is decided here and nowhere else (shared.failures names the kinds; the
MongoDB half of the rule is `shared.mongo.database_unavailable`). Replies (`Err.kind`), the retry/park
middleware and the start-up retries all ask these functions, so "transient is not poison" means one thing.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

from shared.errors import ServiceError
from shared.failures import DependencyFailure, FailureKind
from shared.mongo import database_unavailable


def broker_unavailable(exc: BaseException) -> bool:
    """NATS or a JetStream stream cannot take a message right now: the connection is down, or a stream is
    electing a new leader after a node died (no responder, no stream response, a timeout). The caller may
    retry, so the reply is SERVICE_UNAVAILABLE (503), not INTERNAL_ERROR (found by the cluster fault tests)."""
    return isinstance(
        exc,
        nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError
        | nats.errors.NoRespondersError
        | nats.errors.TimeoutError
        | nats.errors.ConnectionClosedError
        | nats.errors.OutboundBufferLimitError,
    )


def failure_kind(exc: BaseException) -> FailureKind | None:
    """How a handler's failure is classified, once, for both replies and redeliveries: the kind a typed failure
    carries (shared.failures, `ServiceError.kind`), MongoDB or NATS being away (transient), or None: poison or a
    bug."""
    if isinstance(exc, DependencyFailure | ServiceError):
        return exc.kind
    if database_unavailable(exc) or isinstance(exc, nats.errors.Error | ConnectionError | TimeoutError):
        return "transient"
    return None


def retried_while_it_lasts(exc: BaseException) -> bool:
    """A dependency is away or refuses our configuration: waiting will fix it, so it never counts toward parking."""
    return failure_kind(exc) in ("transient", "misconfigured")

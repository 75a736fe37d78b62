"""Admission control: a bound on the requests each route class has in flight at this gateway.

When the bound is reached the next request is answered at once with 503 SERVICE_UNAVAILABLE and Retry-After,
instead of joining a queue whose tail would only wait out the RPC timeout (the measured failure: 240 creates
answered 503, each after the full timeout, while the case service was slow). Shedding early is the answer a
client can act on. Route classes are the throttle's (`opt={"throttle": "create"}`, else "default"); the bound is
per gateway process, so it scales with replicas like the capacity it protects.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from shared import metrics
from shared.errors import ErrorCode, ServiceError

log = logging.getLogger("caseflow.gateway.admission")


class Saturated(ServiceError):
    """The route class is at its in-flight bound: shed now (503 with Retry-After)."""

    def __init__(self, route_class: str) -> None:
        super().__init__(
            ErrorCode.SERVICE_UNAVAILABLE, "The service is at capacity; retry after the time in Retry-After."
        )
        self.route_class = route_class


class InFlightLimits:
    """Counts requests in flight per route class against their bounds (one event loop: no lock needed)."""

    def __init__(self, bounds: Mapping[str, int]) -> None:
        self.bounds = dict(bounds)
        self.in_flight: Counter[str] = Counter()

    def enter(self, route_class: str) -> None:
        bound = self.bounds.get(route_class, self.bounds["default"])
        if self.in_flight[route_class] >= bound:
            metrics.SHED_REQUESTS.labels(route_class=route_class).inc()
            raise Saturated(route_class)
        self.in_flight[route_class] += 1

    def leave(self, route_class: str) -> None:
        self.in_flight[route_class] -= 1


class AdmissionMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)
    # Liveness, readiness and the docs are never shed: they are how operators see the overload.
    exclude_opt_key = "no_admission"

    def __init__(self, limits: InFlightLimits) -> None:
        self.limits = limits

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        route_class = scope["route_handler"].opt.get("throttle", "default")
        self.limits.enter(route_class)
        try:
            await next_app(scope, receive, send)
        finally:
            self.limits.leave(route_class)

"""Liveness and readiness: `/healthz` says the process is up, `/readyz` asks every dependency."""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ErrorEnvelope, ok
from shared.contracts.health import ComponentState, HealthReport
from shared.contracts.rpc import Empty
from shared.errors import ErrorCode, ServiceError
from shared.messaging.connection import nats_client
from shared.mongo import ping
from shared.subjects import BACKEND_SERVICES, Service, health_subject


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["up"]


class Readiness(msgspec.Struct, frozen=True, omit_defaults=True):
    status: Literal["ready", "not_ready"]
    components: dict[str, ComponentState]
    # "<service>.<dependency>" → why that dependency refuses the service's configuration (shared.failures).
    problems: dict[str, str] = {}


@get(
    "/healthz",
    operation_id="liveness",
    tags=["operations"],
    summary="The gateway process is up",
    opt={"no_admission": True},
)
async def healthz() -> DataEnvelope[Liveness]:
    return ok(Liveness(status="up"))


async def _service_state(gateway: GatewayContext, service: Service) -> tuple[ComponentState, dict[str, str]]:
    """A service is ready when it answers and no dependency refuses its configuration."""
    try:
        report = await gateway.rpc(
            health_subject(service), Empty(), HealthReport, timeout=gateway.settings.readiness_timeout_seconds
        )
    except ServiceError:
        return "down", {}
    problems = {f"{service}.{dependency}": reason for dependency, reason in report.problems.items()}
    return ("down" if problems else "ok"), problems


async def readiness(gateway: GatewayContext) -> Readiness:
    client = nats_client(gateway.broker)
    connected = client is not None and client.is_connected
    timeout = gateway.settings.readiness_timeout_seconds
    mongo_ok, service_states = await asyncio.gather(
        ping(gateway.mongo, timeout_seconds=timeout),
        asyncio.gather(*(_service_state(gateway, service) for service in BACKEND_SERVICES)),
    )
    components: dict[str, ComponentState] = {
        "nats": "ok" if connected else "down",
        "mongodb": "ok" if mongo_ok else "down",
        **{str(service): state for service, (state, _) in zip(BACKEND_SERVICES, service_states, strict=True)},
    }
    problems = {name: reason for _, service_problems in service_states for name, reason in service_problems.items()}
    ready = all(state == "ok" for state in components.values())
    return Readiness(status="ready" if ready else "not_ready", components=components, problems=problems)


@get(
    "/readyz",
    operation_id="readiness",
    opt={"no_admission": True},
    tags=["operations"],
    summary="Every service, NATS and MongoDB answer",
    description="503 SERVICE_UNAVAILABLE names the components that are down in `error.details.components`.",
    responses={503: ResponseSpec(data_container=ErrorEnvelope, description="Not ready")},
)
async def readyz(gateway: NamedDependency[GatewayContext]) -> DataEnvelope[Readiness]:
    report: Readiness = await gateway.readiness.get(lambda: readiness(gateway))
    if report.status != "ready":
        down = sorted(name for name, state in report.components.items() if state != "ok")
        raise ServiceError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"Not ready: {', '.join(down)}.",
            details={"components": report.components, "problems": report.problems},
        )
    return ok(report)

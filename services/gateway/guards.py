"""The API-key guard: authenticate, then throttle, before any parameter or body is read.

Guards run before Litestar resolves a handler's arguments, which gives the contract's check order:
auth (401/403), throttling (429), then the body (400), then the case (404/403/409).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Message, Scope

from services.gateway.context import GatewayContext
from services.gateway.throttle import Decision
from shared.contracts.auth import VERIFY_KEY, KeyIdentity, VerifyKey
from shared.errors import ErrorCode, ServiceError
from shared.logs import client_id_var

API_KEY_HEADER = "x-api-key"
# The throttle class of requests that failed authentication (or an AgentMail signature), per source address.
FAILED_AUTH = "failed_auth"
# Real keys are far shorter; anything longer is not worth a round trip to auth.
MAX_API_KEY_LENGTH = 256


class RateLimited(Exception):
    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__("rate limited")


async def authenticate(gateway: GatewayContext, api_key: str | None, *, source: str) -> KeyIdentity:
    """The key's identity: from the cache, else from auth unless `source` has failed too often lately (then 429
    before any lookup, so a key-guessing flood costs neither an RPC nor a database query)."""
    identity = gateway.key_cache.get(api_key) if api_key else None
    if identity is not None:
        return identity
    guard = gateway.throttle.peek(caller=source, route_class=FAILED_AUTH)
    if not guard.allowed:
        raise RateLimited(guard)
    try:
        if not api_key or len(api_key) > MAX_API_KEY_LENGTH:
            raise ServiceError(ErrorCode.UNAUTHORIZED)
        identity = await gateway.rpc(VERIFY_KEY, VerifyKey(api_key=api_key), KeyIdentity)
    except ServiceError as exc:
        if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
            gateway.throttle.take(caller=source, route_class=FAILED_AUTH)
        raise
    gateway.key_cache.put(api_key, identity)
    return identity


def source_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    gateway: GatewayContext = connection.app.state.gateway
    return gateway.source_of(connection.client.host if connection.client else None, connection.headers)


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    gateway: GatewayContext = connection.app.state.gateway
    identity = await authenticate(gateway, connection.headers.get(API_KEY_HEADER), source=source_of(connection))
    client_id_var.set(identity.client_id)
    route_class = handler.opt.get("throttle", "default")
    decision = await gateway.key_throttle.take(caller=identity.key_id, route_class=route_class)
    connection.state.rate_limit = decision
    if not decision.allowed:
        raise RateLimited(decision)
    connection.state.caller = identity


async def add_rate_limit_headers(message: Message, scope: Scope) -> None:
    """Every throttled route's response says how much of the bucket is left."""
    if message["type"] != "http.response.start":
        return
    decision = scope.get("state", {}).get("rate_limit")
    if isinstance(decision, Decision):
        headers = MutableScopeHeaders.from_message(message)
        for name, value in decision.headers().items():
            headers[name] = value

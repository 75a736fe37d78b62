"""What the gateway's handlers need from the process: settings, the broker, caches and a MongoDB ping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient

from services.gateway.auth import KeyCache
from services.gateway.client_address import FORWARDED_FOR, TrustedProxies, source_address
from services.gateway.memo import Memo
from services.gateway.throttle import KeyThrottle, Throttle
from shared.messaging import request
from shared.mongo import Document
from shared.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class GatewayContext:
    settings: GatewaySettings
    broker: NatsBroker
    # Used only to report MongoDB's readiness; the gateway owns no collections.
    mongo: AsyncMongoClient[Document]
    key_cache: KeyCache
    # Failed authentication per source address (always this process's own buckets, on purpose).
    throttle: Throttle
    # Per API key and route class (THROTTLE_STORE: shared by every gateway through NATS KV, or local).
    key_throttle: KeyThrottle
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    # The last readiness report (routes.health), reused for READYZ_CACHE_SECONDS.
    readiness: Memo[Any] = field(default_factory=lambda: Memo(ttl_seconds=0.0))

    def source_of(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address for per-source throttling (X-Forwarded-For only from TRUSTED_PROXIES)."""
        return source_address(peer, headers.get(FORWARDED_FOR), trusted_proxies=self.trusted_proxies)

    async def rpc[T](self, subject: str, payload: msgspec.Struct, reply_type: type[T]) -> T:
        """Ask a service with the configured deadline; its errors arrive as ServiceError."""
        return await request(self.broker, subject, payload, reply_type, timeout=self.settings.rpc_timeout_seconds)

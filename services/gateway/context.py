"""What the gateway's handlers need from the process: settings, the broker, caches and a MongoDB ping."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient

from services.gateway.auth import KeyCache
from services.gateway.throttle import Throttle
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
    throttle: Throttle

    async def rpc[T](self, subject: str, payload: msgspec.Struct, reply_type: type[T]) -> T:
        """Ask a service with the configured deadline; its errors arrive as ServiceError."""
        return await request(self.broker, subject, payload, reply_type, timeout=self.settings.rpc_timeout_seconds)

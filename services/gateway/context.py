"""What the gateway's handlers need from the process: settings, the broker, caches and a MongoDB ping.

A create is confirmed here: the case service stores a case that nothing starts until the gateway, holding its
201, publishes the case's created command; only then is the client answered. So a create the client is
answered 5xx for (or never answered) never starts, and the case service's reconciler removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient

from services.gateway.auth import KeyCache
from services.gateway.client_address import FORWARDED_FOR, TrustedProxies, source_address
from services.gateway.memo import Memo
from services.gateway.throttle import KeyThrottle, Throttle
from shared.contracts import case
from shared.errors import ErrorCode, ServiceError
from shared.messaging.jetstream import publish_durable
from shared.messaging.rpc import RpcClient
from shared.mongo import Document
from shared.settings import GatewaySettings
from shared.subjects import CASE_COMMANDS

log = logging.getLogger("caseflow.gateway")

# A create waits this much past the deadline it sends, so a case stored just before the deadline is answered
# (and confirmed) rather than left for the reconciler; the confirmation publish then has CONFIRM_PUBLISH_SECONDS.
# Their sum must stay well under the case service's CREATE_CONFIRM_GRACE_SECONDS.
CREATE_REPLY_GRACE_SECONDS: Final = 1.0
CONFIRM_PUBLISH_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class GatewayContext:
    settings: GatewaySettings
    broker: NatsBroker
    # Asks the services with RPC_TIMEOUT_SECONDS; their errors arrive as ServiceError.
    rpc: RpcClient
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

    async def create_case(self, command: case.CreateCase) -> case.CreateCaseResult:
        """Ask the case service to store the case, then confirm it (a replay confirms it again, deduplicated by
        its Nats-Msg-Id). A confirmation that cannot be published is a 503: the case never starts."""
        result = await self.rpc(
            case.CREATE, command, case.CreateCaseResult, reply_grace_seconds=CREATE_REPLY_GRACE_SECONDS
        )
        try:
            await publish_durable(
                self.broker,
                case.created_subject(result.case_id),
                case.CaseCreatedCommand(case_id=result.case_id),
                stream=CASE_COMMANDS,
                msg_id=case.created_msg_id(result.case_id),
                timeout=CONFIRM_PUBLISH_SECONDS,
            )
        except Exception as exc:
            log.warning("could not confirm a create; answering 503", extra={"case_id": result.case_id}, exc_info=True)
            raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE) from exc
        return result

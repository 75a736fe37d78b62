"""The outbox relay: publishes the messages a case write owes, then removes them from the case document.

Writers call `publish(record)` right after their write (the fast path). `relay_forever` is the safety net:
it republishes whatever a crashed writer left behind. Every message carries a Nats-Msg-Id, so a message the
fast path already published and the relay publishes again is dropped by JetStream, and consumers are
idempotent for anything older than the duplicate window.
"""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker

from services.case.domain import RELAY_GRACE_MS
from services.case.model import CaseRecord
from services.case.store import CaseStore
from shared.clock import Clock, system_clock, unix_ms
from shared.subjects import MSG_ID_HEADER, REQUEST_ID_HEADER

log = logging.getLogger("caseflow.case.outbox")


class OutboxRelay:
    def __init__(
        self, broker: NatsBroker, store: CaseStore, *, interval_seconds: float = 1.0, clock: Clock = system_clock
    ) -> None:
        self.clock = clock
        self.broker = broker
        self.store = store
        self.interval_seconds = interval_seconds

    async def publish(self, record: CaseRecord, *, request_id: str | None = None) -> None:
        """Publish every owed message of `record` to JetStream, then drop them from its outbox."""
        if not record.outbox:
            return
        js = self.broker.connection.jetstream()
        for message in record.outbox:
            headers = {MSG_ID_HEADER: message.msg_id}
            if request_id:
                headers[REQUEST_ID_HEADER] = request_id
            await js.publish(message.subject, message.payload, stream=message.stream, headers=headers, timeout=5.0)
        await self.store.mark_relayed(record.case_id, [message.msg_id for message in record.outbox])

    async def relay_due(self) -> int:
        cutoff = unix_ms(self.clock()) - RELAY_GRACE_MS
        records = await self.store.with_pending_outbox(older_than=cutoff, limit=100)
        for record in records:
            try:
                await self.publish(record)
            except Exception:
                log.exception("outbox relay failed; will retry", extra={"case_id": record.case_id})
        return len(records)

    async def relay_forever(self) -> None:
        while True:
            relayed = await self.relay_due()
            if relayed:
                log.info("relayed outbox messages left by an earlier write", extra={"cases": relayed})
            await asyncio.sleep(self.interval_seconds)

"""The case service's collections: `cases` (one document per case, with its outbox), `idempotency_keys`, and
`unmatched_messages` (inbound mail that matched no case or several open ones: kept, never discarded).

Concurrency is MongoDB's job (docs/storage.md): every case write is a replace or update conditioned on the
version it read and bumps it; idempotency keys are claimed by a unique `_id`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.case.lifecycle import OPEN_STATUSES, SCHEDULABLE_STATUSES
from services.case.model import CaseRecord, address_key, from_document, to_document
from shared import metrics
from shared.contracts.case import TERMINAL_STATUSES
from shared.failures import Transient
from shared.mongo import Document, at_or_before

CASES: Final = "cases"
IDEMPOTENCY_KEYS: Final = "idempotency_keys"
UNMATCHED_MESSAGES: Final = "unmatched_messages"
# How long a claim stored before claims carried their request's deadline counts as in flight.
LEGACY_CLAIM_MS: Final = 120_000

INDEXES: Final = {
    CASES: [
        # Listing a client's cases in (updatedAt, caseId) order, and filtering by reference id.
        IndexModel([("clientId", ASCENDING), ("updatedAt", ASCENDING), ("_id", ASCENDING)], name="client_updated"),
        IndexModel([("clientId", ASCENDING), ("clientReferenceId", ASCENDING)], name="client_reference"),
        # The scheduler finds due cases through this index.
        IndexModel([("nextActionAt", ASCENDING)], name="next_action"),
        # Inbound mail is matched to its case by thread, else by the counterparty's address.
        IndexModel([("threadId", ASCENDING)], name="thread", sparse=True),
        IndexModel([("threadIds", ASCENDING)], name="threads", sparse=True),
        # The reconciler finds cases whose awaited step outlived its lease through this index.
        IndexModel([("repairAt", ASCENDING)], name="repair_at", sparse=True),
        IndexModel([("counterpartyKey", ASCENDING), ("status", ASCENDING)], name="counterparty_status"),
        # The outbox relay finds cases with unpublished messages.
        IndexModel([("outboxPendingSince", ASCENDING)], name="outbox_pending", sparse=True),
        # The open-cases gauge counts through this index instead of scanning every case.
        IndexModel([("status", ASCENDING)], name="status"),
    ],
    IDEMPOTENCY_KEYS: [
        # MongoDB deletes a key once expiresAt (a BSON date) has passed.
        IndexModel([("expiresAt", ASCENDING)], name="expires_ttl", expireAfterSeconds=0),
    ],
    # No TTL: an unmatched message stays until an operator has looked at it.
    UNMATCHED_MESSAGES: [IndexModel([("storedAt", ASCENDING)], name="stored_at")],
}


class WriteConflict(Transient):
    """Other writes kept changing a case between our read and our write: contention, not poison, so a message
    that meets it is redelivered with backoff (onto a calmer case) and never counted toward parking."""

    def __init__(self, case_id: str) -> None:
        super().__init__("mongodb", f"case {case_id} kept changing under concurrent writes")


@dataclass(frozen=True, slots=True)
class PageCursor:
    updated_at: int
    case_id: str


class CaseStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.cases = db[CASES]

    async def insert(self, record: CaseRecord) -> None:
        await self.cases.insert_one(to_document(record))

    async def get(self, case_id: str) -> CaseRecord | None:
        document = await self.cases.find_one({"_id": case_id})
        return from_document(document) if document else None

    async def replace(self, record: CaseRecord, *, expected_version: int) -> bool:
        """Write `record` (whose version must be expected_version + 1) unless someone else wrote first."""
        result = await self.cases.replace_one({"_id": record.case_id, "version": expected_version}, to_document(record))
        return result.matched_count == 1

    async def write_change(
        self,
        case_id: str,
        change: Callable[[CaseRecord], CaseRecord],
        *,
        loaded: CaseRecord | None = None,
        attempts: int = 5,
    ) -> tuple[CaseRecord, CaseRecord] | None:
        """Apply `change` to the case and store the result under the version it read; after a conflicting
        write, apply it again to the fresh case. Returns (before, after) — the same record twice when the change
        changed nothing — or None when there is no such case. `loaded` saves the first read.
        Raises WriteConflict when the case kept changing for `attempts` tries."""
        current = loaded
        for _ in range(attempts):
            if current is None:
                current = await self.get(case_id)
                if current is None:
                    return None
            changed = change(current)
            if changed == current:
                return current, current
            updated = msgspec.structs.replace(changed, version=current.version + 1)
            if await self.replace(updated, expected_version=current.version):
                if updated.status in TERMINAL_STATUSES and current.status not in TERMINAL_STATUSES:
                    metrics.CASES_FINISHED.labels(status=updated.status).inc()
                return current, updated
            current = None
        raise WriteConflict(case_id)

    async def mark_relayed(self, case_id: str, msg_ids: Sequence[str]) -> None:
        await self.cases.update_one(
            {"_id": case_id}, {"$pull": {"outbox": {"msgId": {"$in": list(msg_ids)}}}, "$inc": {"version": 1}}
        )
        await self.cases.update_one(
            {"_id": case_id, "outbox": {"$size": 0}},
            {"$unset": {"outboxPendingSince": ""}, "$inc": {"version": 1}},
        )

    # ---- creates awaiting their confirmation (see domain.awaiting_confirmation) ----

    async def unconfirmed_creates(self, *, now: int, limit: int) -> list[CaseRecord]:
        """Created cases never started whose confirmation time has passed (through the status index: CREATED
        cases are few, each started moments after its create)."""
        cursor = self.cases.find(
            {"status": "CREATED", "confirmBy": at_or_before(now), "awaitingSend": None, "attemptCount": 0}
        ).limit(limit)
        return [from_document(document) for document in await cursor.to_list(None)]

    async def extend_confirmation(self, case_id: str, *, confirm_by: int) -> bool:
        """A replayed create is about to confirm the case again: push its confirmation time out, and bump the
        version so a reconciler that read it before cannot remove it. False when it no longer awaits one."""
        result = await self.cases.update_one(
            {"_id": case_id, "status": "CREATED", "confirmBy": {"$ne": None}, "awaitingSend": None, "attemptCount": 0},
            {"$max": {"confirmBy": confirm_by}, "$inc": {"version": 1}},
        )
        return result.matched_count == 1

    async def delete_unconfirmed(self, record: CaseRecord) -> bool:
        """Remove a create nobody confirmed, unless it changed since it was read (started, or replayed)."""
        result = await self.cases.delete_one(
            {"_id": record.case_id, "version": record.version, "status": "CREATED", "awaitingSend": None}
        )
        return result.deleted_count == 1

    async def case_for_thread(self, thread_id: str) -> str | None:
        """The case with `thread_id` among its threads (`threadId` alone: cases stored before `threadIds`)."""
        document = await self.cases.find_one({"$or": [{"threadIds": thread_id}, {"threadId": thread_id}]}, {"_id": 1})
        return str(document["_id"]) if document else None

    async def case_for_message(self, *, thread_id: str, counterparty_address: str) -> MessageMatch:
        """The case a counterparty message belongs to: its thread's case, else the one open case with that
        counterparty (none when several are open: guessing would put a reply on the wrong case)."""
        by_thread = await self.case_for_thread(thread_id)
        if by_thread is not None:
            return MessageMatch(case_id=by_thread)
        open_cases = await (
            self.cases.find(
                {"counterpartyKey": address_key(counterparty_address), "status": {"$in": list(OPEN_STATUSES)}},
                {"_id": 1},
            )
            .sort("_id", ASCENDING)
            .limit(MAX_CANDIDATES)
            .to_list(None)
        )
        candidates = tuple(str(document["_id"]) for document in open_cases)
        if len(candidates) == 1:
            return MessageMatch(case_id=candidates[0])
        return MessageMatch(case_id=None, candidates=candidates)

    async def count_open_by_status(self) -> dict[str, int]:
        """Open cases by status, through the status index. Finished cases are not counted: they are all of
        history, so counting them would cost more every day (CASES_FINISHED counts them as they finish)."""
        return {status: await self.cases.count_documents({"status": status}) for status in OPEN_STATUSES}

    async def due_case_ids(self, *, now: int, limit: int) -> list[str]:
        """Cases with a follow-up due, and (the reconciler's) cases with a step past its lease."""
        follow_ups = (
            self.cases.find(
                {"nextActionAt": at_or_before(now), "status": {"$in": list(SCHEDULABLE_STATUSES)}}, {"_id": 1}
            )
            .sort("nextActionAt", ASCENDING)
            .limit(limit)
        )
        repairs = self.cases.find({"repairAt": at_or_before(now)}, {"_id": 1}).sort("repairAt", ASCENDING).limit(limit)
        ids = [str(document["_id"]) for document in await follow_ups.to_list(None)]
        ids.extend(str(document["_id"]) for document in await repairs.to_list(None))
        return list(dict.fromkeys(ids))[:limit]

    async def needing_attention(self, *, now: int, limit: int) -> list[CaseRecord]:
        """The safety round behind the timers, in one query: cases with a follow-up due, with a step past its
        lease, or created and unconfirmed past their confirmation time (`due_case_ids` and
        `unconfirmed_creates` together). One query, because the embedded server reads every case for each one
        (MongoDB answers each `$or` branch from its own index)."""
        cursor = self.cases.find(
            {
                "$or": [
                    {"nextActionAt": at_or_before(now), "status": {"$in": list(SCHEDULABLE_STATUSES)}},
                    {"repairAt": at_or_before(now)},
                    {"status": "CREATED", "confirmBy": at_or_before(now), "awaitingSend": None, "attemptCount": 0},
                ]
            }
        ).limit(limit)
        return [from_document(document) for document in await cursor.to_list(None)]

    async def with_pending_outbox(self, *, older_than: int, limit: int) -> list[CaseRecord]:
        cursor = self.cases.find({"outboxPendingSince": at_or_before(older_than)}).limit(limit)
        return [from_document(document) for document in await cursor.to_list(None)]

    async def page(
        self,
        *,
        client_id: str,
        statuses: Sequence[str],
        client_reference_id: str | None,
        updated_after: int | None,
        after: PageCursor | None,
        limit: int,
    ) -> list[CaseRecord]:
        query: dict[str, Any] = {"clientId": client_id, "pendingCreate": False}
        if statuses:
            query["status"] = {"$in": list(statuses)}
        if client_reference_id is not None:
            query["clientReferenceId"] = client_reference_id
        if updated_after is not None:
            query["updatedAt"] = {"$gt": updated_after}
        if after is not None:
            query["$or"] = [
                {"updatedAt": {"$gt": after.updated_at}},
                {"updatedAt": after.updated_at, "_id": {"$gt": after.case_id}},
            ]
        cursor = self.cases.find(query).sort([("updatedAt", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [from_document(document) for document in await cursor.to_list(None)]


# How many open cases of one counterparty an ambiguous message records as its candidates.
MAX_CANDIDATES: Final = 10


@dataclass(frozen=True, slots=True)
class MessageMatch:
    """The case an inbound message belongs to, or (none) the open cases it could belong to."""

    case_id: str | None
    candidates: tuple[str, ...] = ()


class UnmatchedMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An inbound message no case could take: `no_case` (no thread, no open case of the sender) or `ambiguous`
    (several open cases of the sender: guessing would put it on the wrong case)."""

    message_id: str = msgspec.field(name="_id")
    event_id: str
    inbox_id: str
    thread_id: str
    from_address: str
    subject: str
    received_at: int  # Unix ms
    reason: Literal["no_case", "ambiguous"]
    candidate_case_ids: list[str] = []
    stored_at: int  # Unix ms


class UnmatchedStore:
    """`unmatched_messages`: one document per message id, so a redelivered event stores it once."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.messages = db[UNMATCHED_MESSAGES]

    async def record(self, message: UnmatchedMessage) -> None:
        document = msgspec.to_builtins(message)
        document.pop("_id")
        await self.messages.update_one({"_id": message.message_id}, {"$setOnInsert": document}, upsert=True)

    async def newest(self, *, limit: int) -> list[UnmatchedMessage]:
        cursor = self.messages.find().sort("storedAt", -1).limit(limit)
        return [msgspec.convert(document, UnmatchedMessage) for document in await cursor.to_list(None)]


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """`new`: this request owns the key and creates `case_id`; `existing`: the key names `case_id`, created by
    an earlier request with the same body (a replay if that case exists, else in flight until its deadline has
    passed); `mismatch`: the key was used with another body."""

    outcome: Literal["new", "existing", "mismatch"]
    case_id: str | None = None
    # The deadline of the request that holds the key (Unix ms); None for a claim stored before deadlines.
    deadline_ms: int | None = None


class IdempotencyStore:
    """`Idempotency-Key` records, kept 24 h: one insert claims the key for a case id chosen up front and records
    the request's deadline, so a replay finds its case by id (no second "complete" write), and a claim whose
    case was never stored is taken over only once its request can no longer commit (deadline + grace)."""

    def __init__(self, db: AsyncDatabase[Document], *, ttl: dt.timedelta, takeover_grace_ms: int) -> None:
        self.keys = db[IDEMPOTENCY_KEYS]
        self.ttl = ttl
        self.takeover_grace_ms = takeover_grace_ms

    @staticmethod
    def _id(client_id: str, key: str) -> str:
        return f"{client_id}\x1f{key}"

    async def claim(
        self, *, client_id: str, key: str, request_hash: str, case_id: str, deadline_ms: int, now: dt.datetime
    ) -> IdempotencyClaim:
        """`now` is a naive UTC datetime, as the driver returns stored dates."""
        key_id = self._id(client_id, key)
        fresh = {
            "_id": key_id,
            "clientId": client_id,
            "requestHash": request_hash,
            "caseId": case_id,
            "deadline": deadline_ms,
            "claimedAt": now,
            "expiresAt": now + self.ttl,
        }
        try:
            await self.keys.insert_one(fresh)
        except DuplicateKeyError:
            pass
        else:
            return IdempotencyClaim("new", case_id, deadline_ms)
        existing = await self.keys.find_one({"_id": key_id})
        if existing is None or existing["expiresAt"] <= now:
            # Expired but not yet swept by the TTL monitor (it runs about once a minute): start over.
            await self.keys.delete_one({"_id": key_id, "expiresAt": {"$lte": now}})
            return await self.claim(
                client_id=client_id,
                key=key,
                request_hash=request_hash,
                case_id=case_id,
                deadline_ms=deadline_ms,
                now=now,
            )
        if existing["requestHash"] != request_hash:
            return IdempotencyClaim("mismatch")
        deadline = existing.get("deadline")
        if deadline is None:
            # Stored before claims carried a deadline: in flight for two minutes after it was claimed.
            deadline = int(existing["claimedAt"].replace(tzinfo=dt.UTC).timestamp() * 1000) + LEGACY_CLAIM_MS
        return IdempotencyClaim("existing", existing.get("caseId"), deadline)

    def may_take_over(self, claim_deadline_ms: int | None, *, now_ms: int) -> bool:
        return claim_deadline_ms is not None and now_ms > claim_deadline_ms + self.takeover_grace_ms

    def takeover_wait_seconds(self, claim_deadline_ms: int | None, *, now_ms: int) -> int:
        """Whole seconds (at least 1) until a retry may take the key over: the client's Retry-After for 409
        IDEMPOTENCY_KEY_IN_USE."""
        if claim_deadline_ms is None:
            return 1
        return max(1, math.ceil((claim_deadline_ms + self.takeover_grace_ms - now_ms + 1) / 1000))

    async def take_over(
        self, *, client_id: str, key: str, previous_case_id: str | None, case_id: str, deadline_ms: int
    ) -> bool:
        """Point the key at a new case, unless another request took it over first."""
        taken = await self.keys.find_one_and_update(
            {"_id": self._id(client_id, key), "caseId": previous_case_id},
            {"$set": {"caseId": case_id, "deadline": deadline_ms}},
        )
        return taken is not None

    async def abandon(self, *, client_id: str, key: str, case_id: str) -> None:
        """Forget a claim whose create failed before storing its case, so a retry with the key can succeed."""
        await self.keys.delete_one({"_id": self._id(client_id, key), "caseId": case_id})

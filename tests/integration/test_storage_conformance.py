"""Storage conformance: every kind of MongoDB operation the stores use, checked as MongoDB documents it.

Runs against the embedded server (mongoeco) here and CI, and against a real MongoDB with TEST_MONGO_URL.
When the embedded server gets one wrong, the workaround lives in one place and this test keeps the case.
"""

from __future__ import annotations

import asyncio

import pytest
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.mongo import Document, at_or_before


async def test_unique_index_rejects_a_duplicate(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.keys.create_indexes([IndexModel([("hash", ASCENDING)], unique=True, name="hash_unique")])
    await mongo_db.keys.create_indexes([IndexModel([("hash", ASCENDING)], unique=True, name="hash_unique")])
    await mongo_db.keys.insert_one({"_id": "a", "hash": "h1"})
    with pytest.raises(DuplicateKeyError):
        await mongo_db.keys.insert_one({"_id": "b", "hash": "h1"})
    with pytest.raises(DuplicateKeyError):
        await mongo_db.keys.insert_one({"_id": "a", "hash": "h2"})


async def test_partial_unique_index_applies_only_to_matching_documents(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db.cases.create_indexes(
        [
            IndexModel(
                [("clientId", ASCENDING), ("ref", ASCENDING)],
                unique=True,
                partialFilterExpression={"ref": {"$type": "string"}},
                name="client_ref_unique",
            )
        ]
    )
    await mongo_db.cases.insert_many([{"clientId": "c", "ref": None}, {"clientId": "c", "ref": None}])
    await mongo_db.cases.insert_one({"clientId": "c", "ref": "r1"})
    with pytest.raises(DuplicateKeyError):
        await mongo_db.cases.insert_one({"clientId": "c", "ref": "r1"})


async def test_conditional_update_applies_only_when_the_expected_state_holds(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db.cases.insert_one({"_id": "k", "status": "INPUT_NEEDED", "version": 1})
    first = await mongo_db.cases.find_one_and_update(
        {"_id": "k", "version": 1},
        {"$set": {"status": "RUNNING"}, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER,
    )
    second = await mongo_db.cases.find_one_and_update(
        {"_id": "k", "version": 1}, {"$set": {"status": "FAILED"}, "$inc": {"version": 1}}
    )
    assert first == {"_id": "k", "status": "RUNNING", "version": 2}
    assert second is None


async def test_upsert_with_set_on_insert_only_sets_on_insert(mongo_db: AsyncDatabase[Document]) -> None:
    for _ in range(2):
        doc = await mongo_db.usage.find_one_and_update(
            {"_id": "client:2026-11"},
            {"$setOnInsert": {"createdAt": 1}, "$inc": {"used": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    assert doc == {"_id": "client:2026-11", "createdAt": 1, "used": 2}


async def test_concurrent_capped_increments_never_exceed_the_cap(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.usage.insert_one({"_id": "m", "used": 0})

    async def reserve() -> bool:
        doc = await mongo_db.usage.find_one_and_update({"_id": "m", "used": {"$lt": 30}}, {"$inc": {"used": 1}})
        return doc is not None

    results = await asyncio.gather(*(reserve() for _ in range(100)))
    assert sum(results) == 30
    assert (await mongo_db.usage.find_one({"_id": "m"})) == {"_id": "m", "used": 30}


async def test_push_of_a_sub_document_stores_a_document(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.deliveries.insert_one({"_id": "d", "attempts": []})
    await mongo_db.deliveries.update_one({"_id": "d"}, {"$push": {"attempts": {"status": 500, "meta": {"ms": 3}}}})
    doc = await mongo_db.deliveries.find_one({"_id": "d"})
    assert doc is not None
    assert doc["attempts"] == [{"status": 500, "meta": {"ms": 3}}]


async def test_positional_update_with_elem_match(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.cases.insert_one(
        {"_id": "c", "requests": [{"id": "r1", "status": "RESOLVED"}, {"id": "r2", "status": "PENDING"}]}
    )
    result = await mongo_db.cases.update_one(
        {"_id": "c", "requests": {"$elemMatch": {"id": "r2", "status": "PENDING"}}},
        {"$set": {"requests.$.status": "RESOLVED"}},
    )
    assert result.modified_count == 1
    doc = await mongo_db.cases.find_one({"_id": "c"})
    assert doc is not None
    assert [r["status"] for r in doc["requests"]] == ["RESOLVED", "RESOLVED"]


async def test_keyset_pagination_by_compound_sort(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.cases.insert_many(
        [{"_id": f"id{i}", "clientId": "c", "updatedAt": 100 + i // 2, "status": "RUNNING"} for i in range(7)]
    )
    order = [("updatedAt", ASCENDING), ("_id", ASCENDING)]
    page1 = await mongo_db.cases.find({"clientId": "c"}).sort(order).limit(3).to_list(None)
    last = page1[-1]
    page2 = (
        await mongo_db.cases.find(
            {
                "clientId": "c",
                "$or": [
                    {"updatedAt": {"$gt": last["updatedAt"]}},
                    {"updatedAt": last["updatedAt"], "_id": {"$gt": last["_id"]}},
                ],
            }
        )
        .sort(order)
        .limit(10)
        .to_list(None)
    )
    assert [d["_id"] for d in page1 + page2] == [f"id{i}" for i in range(7)]


async def test_range_query_with_in_sort_desc_and_count(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.cases.insert_many(
        [{"_id": i, "nextActionAt": i * 10, "status": "RUNNING" if i % 2 else "CREATED"} for i in range(10)]
    )
    due = (
        await mongo_db.cases.find({"nextActionAt": {"$lte": 50}, "status": {"$in": ["RUNNING"]}})
        .sort("nextActionAt", DESCENDING)
        .to_list(None)
    )
    assert [d["_id"] for d in due] == [5, 3, 1]
    assert await mongo_db.cases.count_documents({"status": "CREATED"}) == 5


async def test_unset_delete_and_nested_set(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.cases.insert_one({"_id": "x", "outbox": [{"id": 1}], "goal": {"knowledge": {"a": 1}}})
    await mongo_db.cases.update_one(
        {"_id": "x"}, {"$unset": {"outbox": ""}, "$set": {"goal.knowledge.extra": ["note"]}}
    )
    assert await mongo_db.cases.find_one({"_id": "x"}) == {
        "_id": "x",
        "goal": {"knowledge": {"a": 1, "extra": ["note"]}},
    }
    assert (await mongo_db.cases.delete_one({"_id": "x"})).deleted_count == 1
    assert await mongo_db.cases.find_one({"_id": "x"}) is None


async def test_concurrent_claims_of_due_documents_take_each_once_in_due_order(
    mongo_db: AsyncDatabase[Document],
) -> None:
    # The webhook dispatcher's claim: conditional find_one_and_update with a sort, racing other replicas.
    await mongo_db.deliveries.insert_many(
        [{"_id": f"d{i}", "state": "pending", "nextAttemptAt": 100 + i, "claim": None} for i in range(20)]
        + [{"_id": "later", "state": "pending", "nextAttemptAt": 10_000}, {"_id": "done", "state": "delivered"}]
    )

    async def claim(token: int) -> str | None:
        doc = await mongo_db.deliveries.find_one_and_update(
            {"state": "pending", "nextAttemptAt": {"$lte": 1_000}},
            {"$set": {"nextAttemptAt": 61_000, "claim": f"c{token}"}},
            sort=[("nextAttemptAt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else str(doc["_id"])

    first = await claim(0)
    assert first == "d0"
    claimed = [c for c in await asyncio.gather(*(claim(i) for i in range(1, 40))) if c is not None]
    assert sorted(claimed) == sorted(f"d{i}" for i in range(1, 20))


async def test_push_with_set_and_null_under_a_claim_filter(mongo_db: AsyncDatabase[Document]) -> None:
    await mongo_db.deliveries.insert_one({"_id": "d", "claim": "c1", "attempts": [], "nextAttemptAt": 5})
    stale = await mongo_db.deliveries.update_one(
        {"_id": "d", "claim": "c0"}, {"$push": {"attempts": {"status": 200}}, "$set": {"claim": None}}
    )
    assert stale.matched_count == 0
    current = await mongo_db.deliveries.update_one(
        {"_id": "d", "claim": "c1"},
        {"$push": {"attempts": {"status": 500, "error": None}}, "$set": {"claim": None, "nextAttemptAt": None}},
    )
    assert current.matched_count == 1
    assert await mongo_db.deliveries.find_one({"_id": "d"}) == {
        "_id": "d",
        "claim": None,
        "attempts": [{"status": 500, "error": None}],
        "nextAttemptAt": None,
    }


async def test_a_time_range_matches_only_times_in_it_never_a_null_or_missing_time(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """Every store's "due by now" filter (`shared.mongo.at_or_before`). mongoeco matches null with a bare
    `{"$lte": n}` (MongoDB does not), and every case stores `repairAt`, `confirmBy` and `outboxPendingSince` as
    null when unset: with the bare filter the scheduler's safety round took every case for a due one, and
    removed creates still awaiting their confirmation (found by `make test-faults`)."""
    await mongo_db.times.insert_many(
        [{"_id": "null", "at": None}, {"_id": "missing"}, {"_id": "past", "at": 5}, {"_id": "future", "at": 50}]
    )
    found = [d["_id"] async for d in mongo_db.times.find({"at": at_or_before(10)}).sort("_id", ASCENDING)]
    assert found == ["past"]


async def test_capped_idempotent_upsert_inserts_once_then_refuses_with_a_duplicate_key_error(
    mongo_db: AsyncDatabase[Document],
) -> None:
    # Billing's reservation: one conditional update with upsert, `$ne` on an array, `$push` with `$each` and
    # `$slice`. The insert copies only the filter's equality fields; when the document exists but the filter
    # fails (cap reached, id recorded), the upsert's insert hits the unique index.
    await mongo_db.usage.create_indexes(
        [IndexModel([("clientId", ASCENDING), ("month", ASCENDING)], unique=True, name="client_month_unique")]
    )

    def reserve(reservation_id: str) -> tuple[Document, Document]:
        condition = {"clientId": "c", "month": "m", "used": {"$lt": 3}, "reservations": {"$ne": reservation_id}}
        update = {
            "$inc": {"used": 1},
            "$push": {"reservations": {"$each": [reservation_id], "$slice": -2}},
            "$setOnInsert": {"createdAt": 1},
        }
        return condition, update

    first = await mongo_db.usage.find_one_and_update(
        *reserve("r1"), upsert=True, return_document=ReturnDocument.AFTER, projection={"_id": 0}
    )
    assert first == {"clientId": "c", "month": "m", "used": 1, "reservations": ["r1"], "createdAt": 1}
    with pytest.raises(DuplicateKeyError):
        await mongo_db.usage.find_one_and_update(*reserve("r1"), upsert=True)
    assert await mongo_db.usage.find_one_and_update(*reserve("r1")) is None
    for reservation_id in ("r2", "r3"):
        await mongo_db.usage.find_one_and_update(*reserve(reservation_id), upsert=True)
    with pytest.raises(DuplicateKeyError):
        await mongo_db.usage.find_one_and_update(*reserve("r4"), upsert=True)
    # `$slice: -2` keeps the two most recent ids.
    assert await mongo_db.usage.find_one({}, {"_id": 0, "used": 1, "reservations": 1}) == {
        "used": 3,
        "reservations": ["r2", "r3"],
    }


async def test_pull_and_decrement_apply_only_when_the_array_holds_the_value(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db.usage.insert_one({"_id": "u", "used": 2, "reservations": ["r1", "r2"]})
    release = {"$inc": {"used": -1}, "$pull": {"reservations": "r1"}}
    assert (await mongo_db.usage.update_one({"_id": "u", "reservations": "r1"}, release)).modified_count == 1
    assert (await mongo_db.usage.update_one({"_id": "u", "reservations": "r1"}, release)).modified_count == 0
    assert await mongo_db.usage.find_one({"_id": "u"}) == {"_id": "u", "used": 1, "reservations": ["r2"]}


async def test_push_each_slice_keeps_only_the_newest_entries_and_inc_counts_all(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db.deliveries.insert_one({"_id": "capped", "attempts": [], "attemptCount": 0})
    for n in range(7):
        await mongo_db.deliveries.update_one(
            {"_id": "capped"},
            {"$push": {"attempts": {"$each": [{"n": n}], "$slice": -3}}, "$inc": {"attemptCount": 1}},
        )
    assert await mongo_db.deliveries.find_one({"_id": "capped"}) == {
        "_id": "capped",
        "attempts": [{"n": 4}, {"n": 5}, {"n": 6}],
        "attemptCount": 7,
    }


async def test_an_array_field_matches_any_of_its_values_through_a_sparse_index_and_or(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """The case store finds a case by any of its threads (`threadIds`), or by `threadId` for older documents."""
    cases = mongo_db["threads"]
    await cases.create_index([("threadIds", 1)], name="threads", sparse=True)
    await cases.insert_many(
        [
            {"_id": "a", "threadIds": ["t1", "t2"]},
            {"_id": "b", "threadId": "t3"},
            {"_id": "c", "threadIds": ["t4"], "repairAt": 5},
        ]
    )
    for thread, expected in (("t1", "a"), ("t2", "a"), ("t3", "b"), ("t4", "c")):
        found = await cases.find_one({"$or": [{"threadIds": thread}, {"threadId": thread}]}, {"_id": 1})
        assert found is not None
        assert found["_id"] == expected
    assert await cases.find_one({"$or": [{"threadIds": "t9"}, {"threadId": "t9"}]}) is None
    # A missing field never matches a range (the reconciler's `repairAt` query).
    assert [d["_id"] async for d in cases.find({"repairAt": {"$lte": 10}})] == ["c"]


async def test_max_only_raises_and_null_filters_match_null_but_not_a_value(mongo_db: AsyncDatabase[Document]) -> None:
    # An unconfirmed create's confirmation time only moves later (`$max`), under a filter on null fields.
    await mongo_db.cases.insert_many(
        [
            {"_id": "a", "status": "CREATED", "confirmBy": 100, "awaitingSend": None, "version": 0},
            {"_id": "b", "status": "CREATED", "confirmBy": 100, "awaitingSend": 1, "version": 0},
        ]
    )
    waiting = {"status": "CREATED", "confirmBy": {"$ne": None}, "awaitingSend": None}
    raised = await mongo_db.cases.update_one(
        {"_id": "a", **waiting}, {"$max": {"confirmBy": 200}, "$inc": {"version": 1}}
    )
    assert raised.matched_count == 1
    kept = await mongo_db.cases.update_one(
        {"_id": "a", **waiting}, {"$max": {"confirmBy": 150}, "$inc": {"version": 1}}
    )
    assert kept.matched_count == 1
    assert await mongo_db.cases.find_one({"_id": "a"}, {"_id": 0, "confirmBy": 1, "version": 1}) == {
        "confirmBy": 200,
        "version": 2,
    }
    assert (await mongo_db.cases.update_one({"_id": "b", **waiting}, {"$max": {"confirmBy": 300}})).matched_count == 0
    due = mongo_db.cases.find({"status": "CREATED", "confirmBy": {"$lte": 250}, "awaitingSend": None}, {"_id": 1})
    assert [document["_id"] async for document in due] == ["a"]

"""The scheduler scenario's MongoDB: the embedded wire-protocol server (mongoeco, memory engine, as
`deploy.embedded_mongo` runs it) holding N scheduled cases written in-process before it starts listening.

    python -m bench.scheduler_server --port 27999 --cases 100000 --due 1000 --now 1764000000000

Key design decision: the documents go in through mongoeco's own client in this process, then the same client
is served over the wire. Over the wire, every single-document insert costs O(collection size) in mongoeco
(its unique `_id` check scans the collection), so 100 000 inserts would take hours; in-process bulk inserts
take seconds. Prints one JSON line with the seeding time once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import msgspec
from mongoeco import AsyncMongoClient as EmbeddedClient
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

from bench.runner import new_case_body
from bench.scheduler import BATCH, SCHEDULER_DB, scheduled_documents
from services.case.store import CASES, INDEXES
from shared.contracts.case import NewCase


async def serve(*, port: int, cases: int, due: int, now: int) -> None:
    started = time.perf_counter()
    client = EmbeddedClient()
    collection = client[SCHEDULER_DB][CASES]
    await collection.create_indexes(INDEXES[CASES])
    body = msgspec.convert(new_case_body("scheduler"), NewCase)
    documents = scheduled_documents(count=cases, due=due, now=now, body=body)
    for start in range(0, len(documents), BATCH):
        await collection.insert_many(documents[start : start + BATCH], ordered=False)
    del documents
    seeded_s = round(time.perf_counter() - started, 2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(client=client, host="127.0.0.1", port=port) as server:
        print(
            json.dumps({"msg": "seeded", "uri": server.address.uri, "cases": cases, "seeded_s": seeded_s}), flush=True
        )
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cases", type=int, required=True)
    parser.add_argument("--due", type=int, required=True)
    parser.add_argument("--now", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(port=args.port, cases=args.cases, due=args.due, now=args.now))


if __name__ == "__main__":
    main()

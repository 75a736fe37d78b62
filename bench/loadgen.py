"""The load generator for the non-HTTP baselines (NATS request/reply, MongoDB `find_one` and `insert_one`).

    python -m bench.loadgen nats --url nats://... --mode rate --rate 50 --duration 10
    python -m bench.loadgen mongo-find --url mongodb://... --db bench --mode vus --vus 16 --duration 10

Prints one JSON GeneratorReport (the LoadResult and the generator's own CPU seconds). Key design decision: it
mirrors the two k6 executors (`rate` is an open model with a fixed arrival rate, where arrivals that find
every slot busy are dropped, not queued; `vus` is N closed loops) and runs in its own process, so its CPU is
measured apart from the processes under test. It uses the same clients as the services: nats-py, and
PyMongo's async client built by `shared.mongo.create_mongo_client`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
import nats
from pymongo import ASCENDING

from bench.stats import LoadResult, summarise
from shared.mongo import create_mongo_client
from shared.settings import CommonSettings

type Operation = Callable[[], Awaitable[None]]
# A payload of the size of the gateway's GetCase request.
ECHO_PAYLOAD = msgspec.json.encode(
    {"clientId": str(uuid.uuid4()), "caseId": str(uuid.uuid4()), "includeTranscript": False}
)
BASELINE_COLLECTION = "bench_baseline"


class GeneratorReport(msgspec.Struct, frozen=True):
    load: LoadResult
    # This process's CPU seconds while it drove the load (its start-up and connection set-up excluded).
    cpu_s: float


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def drive(
    operation: Operation, *, mode: Literal["rate", "vus"], duration_s: float, rate: int, vus: int
) -> GeneratorReport:
    latencies: list[float] = []
    failed = 0
    dropped = 0

    async def once() -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            await operation()
        except Exception:
            failed += 1
        latencies.append((time.perf_counter() - started) * 1000.0)

    started = time.perf_counter()
    deadline = started + duration_s
    cpu_started = _own_cpu()
    if mode == "vus":

        async def loop() -> None:
            while time.perf_counter() < deadline:
                await once()

        await asyncio.gather(*(loop() for _ in range(vus)))
    else:
        in_flight: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        for n in itertools.count():
            due = started + n * interval
            if due >= deadline:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if len(in_flight) >= vus:
                dropped += 1
                continue
            task = asyncio.create_task(once())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=30)
    load = summarise(latencies, failed=failed, duration_s=time.perf_counter() - started, dropped=dropped)
    return GeneratorReport(load=load, cpu_s=round(_own_cpu() - cpu_started, 3))


async def run(args: argparse.Namespace) -> GeneratorReport:
    if args.target == "nats":
        client = await nats.connect(args.url, name="bench-loadgen")

        async def request() -> None:
            await client.request(args.subject, ECHO_PAYLOAD, timeout=5.0)

        try:
            return await drive(request, mode=args.mode, duration_s=args.duration, rate=args.rate, vus=args.vus)
        finally:
            await client.close()
    mongo = create_mongo_client(CommonSettings(mongo_url=args.url), app_name="bench-loadgen")
    collection = mongo[args.db][BASELINE_COLLECTION]
    try:
        if args.target == "mongo-find":
            ids = [str(document["_id"]) for document in await collection.find({}, {"_id": 1}).to_list(None)]
            if not ids:
                raise SystemExit("mongo-find: the baseline collection is empty (seed it first)")

            async def find() -> None:
                if await collection.find_one({"_id": random.choice(ids)}) is None:  # noqa: S311
                    raise LookupError("seeded document missing")

            operation: Operation = find
        elif args.target == "mongo-list":
            # The same query as `GET /cases?limit=50` (services.case.store.CaseStore.list_cases, first page).
            cases = mongo[args.db]["cases"]
            query = {"clientId": args.client_id, "pendingCreate": False}

            async def page() -> None:
                await cases.find(query).sort([("updatedAt", ASCENDING), ("_id", ASCENDING)]).limit(50).to_list(None)

            operation = page
        else:
            template = await collection.find_one({})
            if template is None:
                raise SystemExit("mongo-insert: the baseline collection is empty (seed it first)")

            async def insert() -> None:
                await collection.insert_one({**template, "_id": str(uuid.uuid4())})

            operation = insert
        return await drive(operation, mode=args.mode, duration_s=args.duration, rate=args.rate, vus=args.vus)
    finally:
        await mongo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["nats", "mongo-find", "mongo-insert", "mongo-list"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--subject", default="bench.echo")
    parser.add_argument("--db", default="bench")
    parser.add_argument("--client-id", default="", help="mongo-list: whose cases to page")
    parser.add_argument("--mode", choices=["rate", "vus"], required=True)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--vus", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(msgspec.json.encode(asyncio.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()

"""The embedded MongoDB wire-protocol server for local runs and tests (mongoeco; see docs/storage.md).

    python -m deploy.embedded_mongo --port 27017 --sqlite .data/mongo/caseflow.sqlite   # durable
    python -m deploy.embedded_mongo --port 0                                              # in memory

Production runs real MongoDB instead; the services cannot tell the difference over the wire.
Prints one JSON line with the URI once it accepts connections, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def serve(host: str, port: int, sqlite_path: Path | None) -> None:
    engine = None
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = SQLiteEngine(str(sqlite_path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(engine=engine, host=host, port=port) as server:
        address = server.address
        engine_name = f"sqlite:{sqlite_path}" if sqlite_path else "memory"
        print(
            json.dumps({"msg": "embedded mongodb ready", "uri": address.uri, "engine": engine_name}),
            flush=True,
        )
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--sqlite", type=Path, default=None, help="SQLite file for durable data; memory if omitted")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.sqlite))
    except OSError as exc:
        print(f"embedded mongodb: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

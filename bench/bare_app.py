"""The bare baseline: one Litestar app with a GET and a POST route, served by uvicorn like the gateway.

    python -m bench.bare_app --port 8123

Key design decision: the same framework, server and HTTP implementation (uvicorn's httptools) as the gateway, with
none of Caseflow's work (auth, throttling, NATS, MongoDB), so the ratio of a Caseflow route to this one is
the cost of our hops, not of the web stack.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Literal

import msgspec
import uvicorn
from litestar import Litestar, Request, get, post


class Bare(msgspec.Struct, frozen=True):
    status: str
    size: int = 0


class Envelope(msgspec.Struct, frozen=True):
    ok: Literal[True]
    data: Bare


@get("/bare")
async def bare_get() -> Envelope:
    return Envelope(ok=True, data=Bare(status="up"))


@post("/bare", status_code=201)
async def bare_post(request: Request[Any, Any, Any]) -> Envelope:
    body = msgspec.json.decode(await request.body())
    return Envelope(ok=True, data=Bare(status="created", size=len(body)))


def create_app() -> Litestar:
    return Litestar(route_handlers=[bare_get, bare_post], debug=False, logging_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        http="httptools",
    )
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()

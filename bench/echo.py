"""The NATS request/reply baseline's responder: answers every request on a subject with its own payload.

    python -m bench.echo --url nats://127.0.0.1:4222 --subject bench.echo

Key design decision: plain nats-py with a queue group, no FastStream and no middleware, so the ratio of a
Caseflow RPC to this echo is the cost of our messaging layer and handlers, not of NATS itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import nats
from nats.aio.msg import Msg


async def serve(url: str, subject: str) -> None:
    client = await nats.connect(url, name="bench-echo")

    async def echo(message: Msg) -> None:
        await message.respond(message.data)

    await client.subscribe(subject, queue="bench-echo", cb=echo)
    await client.flush()
    print("echo ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await client.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--subject", default="bench.echo")
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.subject))


if __name__ == "__main__":
    main()

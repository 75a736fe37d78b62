"""A test-only service on the shared runtime with one slow request handler, to prove graceful shutdown."""

from __future__ import annotations

import asyncio

import msgspec

from shared.contracts.rpc import Ok
from shared.messaging.responder import rpc_subscriber
from shared.runtime import ServiceRuntime
from shared.settings import CommonSettings, load_settings_or_exit
from shared.subjects import Service

SLOW_SUBJECT = "test.rpc.slow"


class SlowRequest(msgspec.Struct):
    seconds: float


class SlowReply(msgspec.Struct):
    slept: float


def main() -> None:
    settings = load_settings_or_exit(CommonSettings, "slow-test-service")
    runtime = ServiceRuntime(Service.WEBHOOK, settings)

    @rpc_subscriber(runtime.broker, SLOW_SUBJECT, queue="slow-test")
    async def slow(body: SlowRequest) -> Ok[SlowReply]:
        await asyncio.sleep(body.seconds)
        return Ok(SlowReply(slept=body.seconds))

    runtime.run()


if __name__ == "__main__":
    main()

"""Holding a durable consumer back during a measured phase: JetStream consumer pause (nats-server 2.11+).

Key design decision: the pause carries its own end (`pause_until`, a bounded time ahead), so a bench that dies
mid-phase leaves a consumer that resumes by itself; the normal way out is an explicit resume. Messages published
meanwhile wait in the stream and are delivered after the resume: holding back delays work, it never drops it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import nats
from nats.js import JetStreamManager


def rfc3339(moment: dt.datetime) -> str:
    """`2026-12-01T15:00:00.123Z`: the UTC form nats-server's `pause_until` takes."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ConsumerState:
    paused: bool
    # Messages of the stream the consumer has not been sent yet, and its count of deliveries so far.
    pending: int
    delivered: int


async def _state(js: JetStreamManager, stream: str, consumer: str) -> ConsumerState:
    info = await js.consumer_info(stream, consumer)
    return ConsumerState(
        paused=bool(info.paused),
        pending=int(info.num_pending or 0),
        delivered=int(info.delivered.consumer_seq or 0) if info.delivered else 0,
    )


async def pause(nats_url: str, stream: str, consumer: str, *, for_at_most_s: float) -> ConsumerState:
    """Pause `consumer` of `stream` (it delivers nothing until resumed, or `for_at_most_s` from now)."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=for_at_most_s)
    client = await nats.connect(nats_url)
    try:
        js = client.jsm()
        answer = await js.pause_consumer(stream, consumer, rfc3339(until))
        if not answer.paused:
            raise RuntimeError(f"nats-server did not pause {stream}/{consumer}: {answer}")
        return await _state(js, stream, consumer)
    finally:
        await client.close()


async def resume(nats_url: str, stream: str, consumer: str) -> ConsumerState:
    """Resume `consumer` now; returns its state before it delivers what waited (pending = what was held)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jsm()
        held = await _state(js, stream, consumer)
        answer = await js.resume_consumer(stream, consumer)
        if answer.paused:
            raise RuntimeError(f"nats-server did not resume {stream}/{consumer}: {answer}")
        return held
    finally:
        await client.close()

"""Parked messages as an operator tool: `python -m services.auth.admin parked list|show|replay|drop`.

A message is parked (shared.messaging.middleware) when its handler failed as poison (undecodable, contract-violating, a
bug, a `PermanentFailure`), never for an outage. It sits on the PARKED stream with its original body and
headers, and the `Caseflow-Parked-*` headers say where it came from and why. These commands work on that
stream directly over NATS (no service, no MongoDB), addressing a parked message by its PARKED sequence.

The one decision a reader must know: `replay` republishes the message to its original subject and stream under
a Nats-Msg-Id derived from its PARKED sequence (`caseflow-replay-<seq>`), and only then deletes it from PARKED.
A replay cut short between the two, and run again, is deduplicated by the original stream (within its
duplicate window): the message is handled once. A replay of a message no longer parked changes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from services.auth.accounts import AccountError, Output
from shared.subjects import (
    MSG_ID_HEADER,
    PARKED,
    PARKED_CONSUMER_HEADER,
    PARKED_DELIVERIES_HEADER,
    PARKED_MSG_ID_HEADER,
    PARKED_REASON_HEADER,
    PARKED_SEQUENCE_HEADER,
    PARKED_STREAM_HEADER,
    PARKED_SUBJECT_HEADER,
)

COMMAND: Final = "parked"
ALL_PARKED: Final = "parked.>"
DEFAULT_LIST_LIMIT: Final = 100
# Headers the park added; a replay sends the message with its original headers only.
_PARK_HEADERS: Final = frozenset(
    {
        PARKED_SUBJECT_HEADER,
        PARKED_STREAM_HEADER,
        PARKED_CONSUMER_HEADER,
        PARKED_SEQUENCE_HEADER,
        PARKED_MSG_ID_HEADER,
        PARKED_REASON_HEADER,
        PARKED_DELIVERIES_HEADER,
        MSG_ID_HEADER,
    }
)


class ParkedMessage(Output, frozen=True, kw_only=True):
    """One parked message as `parked list` shows it."""

    sequence: int  # on the PARKED stream: the id every other parked command takes
    subject: str  # the original subject, where a replay goes
    stream: str
    consumer: str
    reason: str
    deliveries: int  # JetStream's num_delivered when parked (outage deliveries included)
    parked_at: int  # Unix ms


class ParkedMessageDetail(ParkedMessage, frozen=True, kw_only=True):
    """`parked show`: everything, with the original headers and body."""

    original_sequence: int | None
    original_msg_id: str | None
    headers: dict[str, str]
    body: str

    def table_row(self) -> dict[str, object]:
        row = super().table_row()
        row["headers"] = msgspec.json.encode(self.headers).decode()
        return row


class Replayed(Output, frozen=True, kw_only=True):
    sequence: int
    subject: str
    stream: str
    msg_id: str
    # True when the original stream had already taken this replay (a repeated replay): nothing new was queued.
    duplicate: bool


class Dropped(Output, frozen=True, kw_only=True):
    sequence: int
    subject: str


type ParkedResult = ParkedMessage | Sequence[ParkedMessage] | Replayed | Dropped


def replay_msg_id(parked_sequence: int) -> str:
    return f"caseflow-replay-{parked_sequence}"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], output: argparse.ArgumentParser) -> None:
    """`parked` and its four subcommands, each taking `--format` like every admin command."""
    summary = "list, show, replay or drop messages parked on the PARKED stream (poison, never outages)"
    parked = commands.add_parser(COMMAND, help=summary, description=summary)
    actions = parked.add_subparsers(dest="parked_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[output],
        help="parked messages, oldest first: [{sequence, subject, stream, consumer, reason, deliveries, parkedAt}]",
    )
    listing.add_argument("--stream", help="only messages parked from this stream, e.g. CASE_COMMANDS")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIST_LIMIT, help="at most this many (default 100)")
    for name, text in (
        ("show", "one parked message with its original headers and body"),
        ("replay", "republish it to its original subject (idempotent), then remove it from PARKED"),
        ("drop", "remove it from PARKED for good"),
    ):
        action = actions.add_parser(name, parents=[output], help=text, description=text)
        action.add_argument("sequence", metavar="SEQUENCE", type=int, help="its sequence on PARKED (from list)")


async def run(connection: NatsClient, args: argparse.Namespace) -> ParkedResult:
    match args.parked_command:
        case "list":
            return await list_parked(connection, stream=args.stream, limit=args.limit)
        case "show":
            return detail_of(await _get(connection, args.sequence))
        case "replay":
            return await replay(connection, args.sequence)
        case _:
            return await drop(connection, args.sequence)


async def list_parked(connection: NatsClient, *, stream: str | None, limit: int) -> list[ParkedMessage]:
    js = connection.jetstream()
    found: list[ParkedMessage] = []
    sequence = 1
    while len(found) < limit:
        try:
            raw = await js.get_msg(PARKED.name, seq=sequence, subject=ALL_PARKED, next=True)
        except NotFoundError:
            break
        parked = summary_of(raw)
        if stream is None or parked.stream == stream:
            found.append(parked)
        sequence = parked.sequence + 1
    return found


async def replay(connection: NatsClient, sequence: int) -> Replayed:
    raw = await _get(connection, sequence)
    parked = detail_of(raw)
    msg_id = replay_msg_id(sequence)
    js = connection.jetstream()
    # Published before the delete: a replay cut short in between leaves the message parked, and its rerun is
    # deduplicated by msg_id.
    ack = await js.publish(
        parked.subject, raw.data or b"", stream=parked.stream, headers={**parked.headers, MSG_ID_HEADER: msg_id}
    )
    await js.delete_msg(PARKED.name, sequence)
    return Replayed(
        sequence=sequence, subject=parked.subject, stream=parked.stream, msg_id=msg_id, duplicate=bool(ack.duplicate)
    )


async def drop(connection: NatsClient, sequence: int) -> Dropped:
    parked = summary_of(await _get(connection, sequence))
    await connection.jetstream().delete_msg(PARKED.name, sequence)
    return Dropped(sequence=sequence, subject=parked.subject)


async def _get(connection: NatsClient, sequence: int) -> RawStreamMsg:
    try:
        return await connection.jetstream().get_msg(PARKED.name, seq=sequence)
    except NotFoundError:
        raise AccountError(f"no parked message with sequence {sequence} (replayed or dropped already?)") from None


def _headers(raw: RawStreamMsg) -> dict[str, str]:
    return {str(name): str(value) for name, value in (raw.headers or {}).items()}


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def summary_of(raw: RawStreamMsg) -> ParkedMessage:
    headers = _headers(raw)
    moment = raw.time or dt.datetime.now(dt.UTC)
    # Messages parked before the stream and consumer headers existed still name them in their subject.
    _, subject_stream, subject_consumer = (*(raw.subject or "").split(".", 2), "", "")[:3]
    return ParkedMessage(
        sequence=raw.seq or 0,
        subject=headers.get(PARKED_SUBJECT_HEADER, ""),
        stream=headers.get(PARKED_STREAM_HEADER, subject_stream),
        consumer=headers.get(PARKED_CONSUMER_HEADER, subject_consumer),
        reason=headers.get(PARKED_REASON_HEADER, ""),
        deliveries=_int_or_none(headers.get(PARKED_DELIVERIES_HEADER)) or 0,
        parked_at=int(moment.timestamp() * 1000),
    )


def detail_of(raw: RawStreamMsg) -> ParkedMessageDetail:
    summary = summary_of(raw)
    headers = _headers(raw)
    return ParkedMessageDetail(
        **msgspec.structs.asdict(summary),
        original_sequence=_int_or_none(headers.get(PARKED_SEQUENCE_HEADER)),
        original_msg_id=headers.get(PARKED_MSG_ID_HEADER),
        headers={
            name: value for name, value in headers.items() if name not in _PARK_HEADERS and not name.startswith("Nats-")
        },
        body=(raw.data or b"").decode("utf-8", errors="replace"),
    )

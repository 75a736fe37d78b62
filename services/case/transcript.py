"""The case transcript, built from the adapter's message store (never fetched live from AgentMail).

A case may span several threads (a counterparty who writes fresh): its transcript is every thread's messages
merged oldest first, each message once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable

from services.case.model import CaseRecord
from shared.contracts.agentmail import TranscriptMessage
from shared.contracts.case import TranscriptEntry


def case_threads(case: CaseRecord) -> list[str]:
    """Every thread of the case, the first one first (cases stored before `threadIds` have only `threadId`)."""
    threads = list(case.thread_ids)
    if case.thread_id is not None and case.thread_id not in threads:
        threads.insert(0, case.thread_id)
    return threads


def merge_threads(threads: Iterable[list[TranscriptMessage]]) -> list[TranscriptMessage]:
    """The messages of several threads as one transcript: oldest first, each message once."""
    unique = {message.message_id: message for thread in threads for message in thread}
    return sorted(unique.values(), key=lambda message: message.at)


async def case_transcript(
    case: CaseRecord, fetch_thread: Callable[[str], Awaitable[list[TranscriptMessage]]]
) -> list[TranscriptMessage]:
    return merge_threads([await fetch_thread(thread_id) for thread_id in case_threads(case)])


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_transcript(messages: list[TranscriptMessage]) -> str:
    """Offload's `conversationThread`: a plain-text transcript, oldest message first."""
    blocks = []
    for message in messages:
        header = (
            f"[{_iso(message.at)}] {message.direction.upper()}\n"
            f"From: {message.from_address}\nTo: {', '.join(message.to)}\nSubject: {message.subject}"
        )
        blocks.append(f"{header}\n\n{message.text.strip()}")
    return "\n\n---\n\n".join(blocks)


def transcript_entries(messages: list[TranscriptMessage]) -> list[TranscriptEntry]:
    return [
        TranscriptEntry(
            direction=message.direction,
            message_id=message.message_id,
            from_=message.from_address,
            to=message.to,
            subject=message.subject,
            text=message.text,
            at=message.at,
        )
        for message in messages
    ]

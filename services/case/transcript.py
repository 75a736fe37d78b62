"""The case transcript, built from the adapter's message store (never fetched live from AgentMail).

A case may span several threads (a counterparty who writes fresh): its transcript is every thread's messages
merged oldest first, each message once. Two views of it, bounded differently. The client's view shows what the
adapter serves (whole messages, newest first within the adapter's byte budget per thread, with a visible marker
for what was left out). The agent's view
(either backend) is smaller by design: the first `AGENT_MESSAGE_MAX_CHARS` of each message, the newest messages
up to `AGENT_TRANSCRIPT_MAX_CHARS` in all, so neither a long thread nor a huge reply can make judging slow,
a prompt unbounded or a case fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import msgspec

from services.case.model import CaseRecord
from shared.contracts.agentmail import TranscriptMessage
from shared.contracts.case import TranscriptEntry
from shared.text import clipped, single_line

# What the agent reads of one message (a prefix) and of a thread (the newest messages, at least one).
AGENT_MESSAGE_MAX_CHARS: Final = 20_000
AGENT_TRANSCRIPT_MAX_CHARS: Final = 100_000


def for_agent(messages: list[TranscriptMessage]) -> list[TranscriptMessage]:
    """The thread as the agent reads it: each message clipped, and only the newest that fit the total."""
    kept: list[TranscriptMessage] = []
    total = 0
    for message in reversed(messages):
        text = clipped(message.text, AGENT_MESSAGE_MAX_CHARS)
        if kept and total + len(text) > AGENT_TRANSCRIPT_MAX_CHARS:
            break
        total += len(text)
        kept.append(message if text is message.text else msgspec.structs.replace(message, text=text))
    return kept[::-1]


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


def format_transcript(messages: list[TranscriptMessage], *, omitted: int = 0) -> str:
    """Offload's `conversationThread`: a plain-text transcript, oldest message first, starting with a marker
    when the `omitted` oldest messages were left out. Header values are shown on one line each, so a subject
    with CR/LF in it cannot forge a header or a message boundary."""
    blocks = [f"[{omitted} earlier messages not shown: the transcript is capped in size]"] if omitted else []
    for message in messages:
        header = (
            f"[{_iso(message.at)}] {message.direction.upper()}\n"
            f"From: {single_line(message.from_address)}\nTo: {single_line(', '.join(message.to))}\n"
            f"Subject: {single_line(message.subject)}"
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

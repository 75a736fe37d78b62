"""The case transcript, built from the adapter's message store (never fetched live from AgentMail)."""

from __future__ import annotations

import datetime as dt

from shared.contracts.agentmail import TranscriptMessage
from shared.contracts.case import TranscriptEntry


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

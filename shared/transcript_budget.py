"""The byte budget of a transcript on the bus: the newest messages that fit, always at least the newest one.

NATS refuses any message over `max_payload` (8 MB in deploy/nats.conf). The adapter bounds each thread it serves
and the case service bounds a case's merged threads again with the same budget, so a case with several large
threads still answers within one message: the case reply shows its transcript twice (`conversationThread` and
`conversationMessages`) beside the case itself (whose create body is at most 1 MiB): 2 x 2.5 MB + 1 MiB fits.
Sizes are measured as the JSON the bus carries (msgspec's encoding, where a control character can cost six bytes).
"""

from __future__ import annotations

from typing import Final

import msgspec

from shared.contracts.agentmail import TranscriptMessage

TRANSCRIPT_MAX_BYTES: Final = 2_500_000
# What a transcript entry costs besides its text and subject (ids, addresses, timestamps, JSON punctuation).
ENTRY_OVERHEAD_BYTES: Final = 512


def encoded_size(text: str) -> int:
    return len(msgspec.json.encode(text))


class TranscriptBudget:
    """Offered messages newest first, admits each that still fits; the first one offered always fits."""

    def __init__(self, max_bytes: int = TRANSCRIPT_MAX_BYTES) -> None:
        self.left = max_bytes
        self.admitted = 0

    def admits(self, message: TranscriptMessage) -> bool:
        size = encoded_size(message.text) + encoded_size(message.subject) + ENTRY_OVERHEAD_BYTES
        if self.admitted and size > self.left:
            return False
        self.left -= size
        self.admitted += 1
        return True


def newest_that_fit(messages: list[TranscriptMessage]) -> tuple[list[TranscriptMessage], int]:
    """Of `messages` (oldest first), the newest that fit the budget, oldest first, and how many were left out."""
    budget = TranscriptBudget()
    kept: list[TranscriptMessage] = []
    for message in reversed(messages):
        if not budget.admits(message):
            break
        kept.append(message)
    return kept[::-1], len(messages) - len(kept)

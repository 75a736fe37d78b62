"""Bounds on the mail the adapter stores, publishes and serves, wherever a counterparty or a client sets the size.

NATS refuses any message over `max_payload` (8 MB in deploy/nats.conf), so a payload that can grow with a thread
would one day fail every step of its case. The design decision: sizes are measured as the JSON the bus carries
(msgspec's encoding, where a control character can cost six bytes), one inbound message's text is kept whole up
to `MESSAGE_TEXT_MAX_BYTES`, and a transcript reply holds the newest messages within the transcript budget
(shared/transcript_budget.py, which the case service applies again to a case's merged threads).
Outgoing subjects are made single-line and bounded here, in the one place every email we send passes.
"""

from __future__ import annotations

from typing import Final

from shared.text import single_line
from shared.transcript_budget import encoded_size

MESSAGE_TEXT_MAX_BYTES: Final = 1_500_000
SUBJECT_MAX_CHARS: Final = 200
# An inbound subject is stored as received (it is shown) but bounded.
INBOUND_SUBJECT_MAX_CHARS: Final = 2_000


def bounded_text(text: str, max_bytes: int = MESSAGE_TEXT_MAX_BYTES) -> str:
    """`text`, or its longest prefix whose encoding fits `max_bytes` with a marker saying how much was cut."""
    size = encoded_size(text)
    if size <= max_bytes:
        return text
    keep = len(text) * max_bytes // size
    while True:
        candidate = f"{text[:keep]}\n[… {len(text) - keep} more characters not kept: the message is too large]"
        if encoded_size(candidate) <= max_bytes:
            return candidate
        keep = keep * 9 // 10


def outgoing_subject(subject: str) -> str:
    """A subject safe for an email header: one line (no CR/LF or other control characters), at most
    SUBJECT_MAX_CHARS characters, cut at a word where possible."""
    line = single_line(subject)
    if len(line) <= SUBJECT_MAX_CHARS:
        return line
    cut = line[: SUBJECT_MAX_CHARS - 1]
    if " " in cut[SUBJECT_MAX_CHARS // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return f"{cut}…"

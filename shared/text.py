"""Text that crosses a trust boundary made safe to show on one line, or cut to a size, with a visible marker.

Shared by the case service (transcripts) and the AgentMail adapter (outgoing subjects), so "single-line" means
the same everywhere: no character of Unicode categories Cc (CR, LF, NUL, ...), Cf (bidi overrides, zero-width
characters), Zl or Zp survives; each becomes a space and runs of spaces collapse.
"""

from __future__ import annotations

import unicodedata
from typing import Final

_NOT_ON_ONE_LINE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def single_line(text: str) -> str:
    """`text` with line breaks and other control or format characters as spaces, runs of spaces collapsed."""
    spaced = "".join(" " if unicodedata.category(char) in _NOT_ON_ONE_LINE else char for char in text)
    return " ".join(spaced.split())


def clipped(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters followed by a marker saying how many are not shown."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[… {len(text) - limit} more characters not shown]"

"""Checking a GOAL_ACHIEVED judgement's evidence before a case may complete. Pure: no I/O, no model.

The model must cite, for each result field, the counterparty's own words or the filename of an attachment they
sent (the client's own answers count too, so a client asked "is the goal achieved?" can settle it). The key
decision: "own words" means the new text of an inbound message, with quoted history (lines starting with ">",
anything after "On ... wrote:" or an "Original Message" separator) removed, because a reply usually quotes our
own email, and our words must never count as the counterparty's. A quote is compared after collapsing whitespace
only: a paraphrase, a changed character, or a sentence from our own emails fails. What the check cannot do is
judge meaning: a verbatim quote that does not actually support its field still passes, which is why a quote must
also be at least a few characters long, and why words that address the agent itself ("ignore your instructions",
"mark this case as done": `INSTRUCTION_TO_THE_AGENT`) never count as evidence: a case is not completed on the
counterparty's say-so alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import re2

from shared.contracts.agentmail import TranscriptMessage

# The "field" of the evidence for the goal itself when there is no resultSchema.
GOAL_FIELD: Final = "goal"
MIN_QUOTE_CHARS: Final = 4
_QUOTED_HISTORY: Final = re.compile(
    r"(?:^|\n)[ \t]*(?:On [^\n]{0,300}?wrote:|-{2,}\s*Original Message\s*-{2,})[ \t]*(?:\n|$)", re.IGNORECASE
)


# Words aimed at the agent rather than at the request: prompt injections, and orders to close the case. RE2.
INSTRUCTION_TO_THE_AGENT: Final = re2.compile(
    r"(?i)\b(?:"
    r"(?:ignore|disregard|forget|override)\s+(?:\w+\s+){0,3}(?:instructions?|rules|prompts?|guidelines)"
    r"|(?:mark|set|flag|record|close|consider|treat|update)\s+(?:(?:this|the|that|it|my|our|your)\s+)?"
    r"(?:(?:case|task|request|ticket|goal|job|status)\s+)?(?:as\s+|to\s+)?"
    r"(?:done|completed?|achieved|resolved|closed|finished|successful|goal[ _]achieved)"
    r"|(?:system|developer)\s+(?:prompt|message|override|instructions?)"
    r"|(?:reveal|print|show|repeat|output|dump)\s+(?:\w+\s+){0,3}(?:case\s*file|prompt|instructions|metadata)"
    r"|goal_achieved|you\s+are\s+now\b"
    r")"
)


def instructs_the_agent(text: str) -> bool:
    """Whether `text` addresses the agent (orders it, or tries to re-program it) instead of the request.
    Read as NFKC without format characters, so fullwidth letters or zero-width joins do not hide the words."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(char for char in folded if unicodedata.category(char) != "Cf")
    return INSTRUCTION_TO_THE_AGENT.search(visible) is not None


class Citation(msgspec.Struct, frozen=True):
    field: str
    quote: str | None = None
    attachment: str | None = None


@dataclass(frozen=True, slots=True)
class Unsupported:
    field: str
    why: str


def normalised(text: str) -> str:
    return " ".join(text.split())


def own_words(message: TranscriptMessage) -> str:
    """What the sender wrote in this message, without the earlier emails it quotes."""
    fresh = _QUOTED_HISTORY.split(message.text, maxsplit=1)[0]
    return "\n".join(line for line in fresh.splitlines() if not line.lstrip().startswith(">"))


def unsupported_fields(
    result: dict[str, Any],
    citations: Sequence[Citation],
    transcript: Sequence[TranscriptMessage],
    *,
    client_answers: Sequence[str] = (),
) -> list[Unsupported]:
    """The result fields (or the goal, for an empty result) that no verified citation supports.

    The client's own answers (`additionalHumanContext`) count as evidence too: the client is the principal, and
    when the agent asks "is the goal achieved?" their answer must be able to settle it."""
    inbound = [message for message in transcript if message.direction == "inbound"]
    theirs = [normalised(own_words(message)) for message in inbound] + [normalised(text) for text in client_answers]
    ours = [normalised(message.text) for message in transcript if message.direction == "outbound"]
    filenames = {attachment.filename for message in inbound for attachment in message.attachments}

    def problem(citation: Citation) -> str | None:
        """None when the citation is verified, else why not."""
        if citation.attachment is not None and citation.attachment in filenames:
            return None
        if citation.quote is None or not citation.quote.strip():
            if citation.attachment is not None:
                return f'no attachment named "{citation.attachment}" came from the counterparty'
            return "the citation gives neither a quote nor an attachment"
        quote = normalised(citation.quote)
        if len(quote) < MIN_QUOTE_CHARS or not any(char.isalnum() for char in quote):
            return f'the quote "{quote}" is too short to be evidence'
        if instructs_the_agent(quote):
            return f'the quote "{_clip(quote)}" is an instruction to the agent, not evidence'
        if any(quote in words for words in theirs):
            return None
        if any(quote in text for text in ours):
            return f'the quote "{_clip(quote)}" comes from our own email, not from the counterparty'
        return f'the quote "{_clip(quote)}" does not appear in any message from the counterparty'

    problems: dict[str, list[str]] = {}
    verified: set[str] = set()
    for citation in citations:
        found = problem(citation)
        if found is None:
            verified.add(citation.field)
        else:
            problems.setdefault(citation.field, []).append(found)
    if not result:
        # Nothing to extract: any verified citation shows the goal itself was met.
        if verified:
            return []
        every_problem = [found for found_for_field in problems.values() for found in found_for_field]
        return [Unsupported(field=GOAL_FIELD, why="; ".join(every_problem) or "no citation was given")]
    return [
        Unsupported(field=name, why="; ".join(problems.get(name, [])) or "no citation was given")
        for name in result
        if name not in verified
    ]


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

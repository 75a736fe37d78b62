"""What the worker asks of an agent, and what it gets back. Backends implement `Agent`.

The worker never trusts a judgement blindly: a GOAL_ACHIEVED result is validated against the case's
`resultSchema` by the lifecycle before the case completes (and, for the LLM backend, its citations are
checked against the counterparty's own words).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from services.case.model import CaseRecord, EmailKind
from shared.contracts.agentmail import TranscriptMessage

Outcome = Literal["GOAL_ACHIEVED", "REQUIRES_REPLY", "NEEDS_INPUT", "REFUSED", "WAIT"]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True, slots=True)
class Draft:
    subject: str
    text: str
    # What writing it cost (zero for the rules agent).
    usage: TokenUsage = field(default_factory=TokenUsage)


@dataclass(frozen=True, slots=True)
class Judgement:
    outcome: Outcome
    # GOAL_ACHIEVED: the extracted result (validated against resultSchema by the lifecycle).
    result: dict[str, Any] | None = None
    # REQUIRES_REPLY: the reply to send.
    reply: Draft | None = None
    # NEEDS_INPUT: the question for the client.
    question: str | None = None
    # Why, in a sentence (REFUSED: becomes the case's failureReason).
    reason: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)


@dataclass(frozen=True, slots=True)
class ComposeRequest:
    case: CaseRecord
    kind: EmailKind
    attempt: int
    transcript: list[TranscriptMessage]


@dataclass(frozen=True, slots=True)
class JudgeRequest:
    case: CaseRecord
    transcript: list[TranscriptMessage]
    # "reply": a counterparty message arrived; "input": the client answered an input request.
    trigger: Literal["reply", "input"]


class AgentCannotProceed(Exception):
    """The agent cannot write or judge this case (e.g. its token budget is spent, or the model keeps giving
    unusable output): the case pauses in INPUT_NEEDED with `question` for the client."""

    def __init__(self, question: str) -> None:
        self.question = question
        super().__init__(question)


class Agent(Protocol):
    async def compose(self, request: ComposeRequest) -> Draft: ...

    async def judge(self, request: JudgeRequest) -> Judgement: ...

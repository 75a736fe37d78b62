"""The rules agent (`AGENT_BACKEND=rules`, the default): deterministic emails and judgements, no model.

It writes plain, polite emails from the goal, knowledge, counterparty, sender persona and constraints, and
judges the counterparty's latest message by what it says in plain words: a refusal, an agreement or a
delivered document, a question (answerable from the goal, or only by the client), or nothing actionable.
Results are filled in from `resultSchema` field by field (booleans, strings with a `pattern`, dates,
numbers, enums, received attachments); the lifecycle validates them before any case completes.
It is predictable by design: good enough for the scripted counterparties and for tests, and the reference
behaviour the LLM backend is compared with.

Everything it matches against counterparty text is linear in that text and reads a bounded prefix of it (the
first `AGENT_MESSAGE_MAX_CHARS`): its own patterns and the client's `pattern`s run on RE2, which cannot
backtrack, so a huge or crafted reply costs milliseconds, never the event loop that answers the case API.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final

import re2

from services.case import patterns
from services.case.agent.citations import instructs_the_agent
from services.case.agent.port import ComposeRequest, Draft, Judgement, JudgeRequest
from services.case.model import CaseRecord
from services.case.transcript import AGENT_MESSAGE_MAX_CHARS
from shared.contracts.agentmail import TranscriptMessage

# RE2 patterns (linear time); RE2 spells "end of text" \z and takes flags inline.
REFUSAL: Final = re2.compile(
    r"(?i)\b(won'?t be able|will not be able|unable to|not able to|cannot provide|can'?t provide|decline|refuse|"
    r"not interested|will not (?:provide|send|share)|do not wish)\b"
)
AGREEMENT: Final = re2.compile(
    r"(?i)\b(attached|enclosed|please find|here is|here's|we agree|i agree|signed|done|completed|sent it)\b"
)
# Questions the agent can answer from the case itself: what is needed, and what for.
ABOUT_THE_REQUEST: Final = re2.compile(
    r"(?i)\b(what (?:exactly )?(?:do )?you need|what (?:it|this) is for|what is (?:it|this) for|remind me|"
    r"what (?:is|was) (?:the|your) (?:request|reason)|why do you need|which document)\b"
)
QUESTION_SENTENCE: Final = re2.compile(r"[^.!?\n]*\?")
SIGN_OFF: Final = re2.compile(r"(?is)\n\s*(best regards|regards|thanks|thank you|cheers)[,!]?\s*\n.*\z")
QUOTE_INTRODUCTION: Final = re2.compile(r"\n\s*On .+ wrote:\s*\n")
SENTENCE_END: Final = re2.compile(r"([.!?])\s+")
NUMBER: Final = re2.compile(r"-?\d+(?:\.\d+)?")


def _first_name(name: str) -> str:
    return name.split()[0] if name.split() else name


def _knowledge_lines(knowledge: str | dict[str, Any] | None) -> list[str]:
    if knowledge is None:
        return []
    if isinstance(knowledge, str):
        return [knowledge]
    lines = []
    for key, value in knowledge.items():
        if key == "additionalHumanContext":
            continue
        label = re.sub(r"(?<!^)(?=[A-Z])", " ", key).replace("_", " ").strip().capitalize()
        lines.append(f"{label}: {value}")
    return lines


def _human_context(knowledge: str | dict[str, Any] | None) -> list[str]:
    if isinstance(knowledge, dict):
        context = knowledge.get("additionalHumanContext")
        if isinstance(context, list):
            return [str(item) for item in context]
    return []


def _signature(case: CaseRecord) -> str:
    persona = case.sender_persona
    title = ", ".join(part for part in (persona.role, persona.company) if part)
    return f"{persona.name}\n{title}" if title else persona.name


def _latest_inbound(transcript: list[TranscriptMessage]) -> TranscriptMessage | None:
    return next((m for m in reversed(transcript) if m.direction == "inbound"), None)


def _body_of(message: TranscriptMessage) -> str:
    """The new part of an email's first AGENT_MESSAGE_MAX_CHARS characters: quoted history and the sign-off are
    not what the sender is saying now."""
    analysed = message.text[:AGENT_MESSAGE_MAX_CHARS]
    lines = [line for line in analysed.splitlines() if not line.lstrip().startswith(">")]
    text = "\n".join(lines)
    text = QUOTE_INTRODUCTION.split(text, maxsplit=1)[0]
    return str(SIGN_OFF.sub("", text)).strip()


class RulesAgent:
    """Deterministic agent: the same case and thread always give the same email and the same judgement."""

    async def compose(self, request: ComposeRequest) -> Draft:
        case = request.case
        subject = case.goal.objective.strip().rstrip(".")
        greeting = f"Hi {_first_name(case.counterparty.name)},"
        match request.kind:
            case "first":
                introduction = f"I'm {case.sender_persona.name}" + (
                    f", {case.sender_persona.role}" if case.sender_persona.role else ""
                )
                if case.sender_persona.company:
                    introduction += f" at {case.sender_persona.company}"
                details = _knowledge_lines(case.goal.knowledge)
                body = [
                    greeting,
                    "",
                    f"{introduction}. I'm writing to ask for your help with the following: {subject}.",
                ]
                if details:
                    body += ["", "Some details that may help:", *(f"- {line}" for line in details)]
                body += ["", "Could you take care of this, or let me know if anything is unclear?"]
            case "follow_up":
                body = [
                    greeting,
                    "",
                    f"I'm following up on my earlier email about the following: {subject}.",
                    "Could you let me know where this stands? A short reply is perfectly fine.",
                ]
            case "reply":
                body = [greeting, "", *self._answer(case, request.transcript)]
        text = "\n".join([*body, "", "Thank you,", _signature(case)])
        return Draft(subject=subject if request.kind == "first" else f"Re: {subject}", text=text)

    def _answer(self, case: CaseRecord, transcript: list[TranscriptMessage]) -> list[str]:
        """A reply to the counterparty's latest message, from the goal and what the client told us."""
        context = _human_context(case.goal.knowledge)
        if context:
            return [f"Thanks for your question. {context[-1].strip()}", "", "Does that help you go ahead?"]
        details = _knowledge_lines(case.goal.knowledge)
        lines = [f"Of course. What we need is the following: {case.goal.objective.strip().rstrip('.')}."]
        if details:
            lines += ["", "For context:", *(f"- {line}" for line in details)]
        return [*lines, "", "Please let me know if you have any other question."]

    async def judge(self, request: JudgeRequest) -> Judgement:
        case = request.case
        latest = _latest_inbound(request.transcript)
        if latest is None:
            return Judgement(outcome="WAIT", reason="There is no message from the counterparty to judge.")
        said = _body_of(latest)
        if REFUSAL.search(said):
            return Judgement(outcome="REFUSED", reason=_sentence(said, REFUSAL) or "The counterparty declined.")
        questions = [str(q).strip() for q in QUESTION_SENTENCE.findall(said) if str(q).strip()]
        if questions:
            answered_by_client = request.trigger == "input" and bool(_human_context(case.goal.knowledge))
            if answered_by_client or ABOUT_THE_REQUEST.search(said):
                draft = await self.compose_reply(case, request.transcript)
                return Judgement(outcome="REQUIRES_REPLY", reply=draft, reason="The counterparty asked a question.")
            return Judgement(
                outcome="NEEDS_INPUT",
                question=f'The counterparty asked: "{" ".join(questions)}" How should I answer?',
                reason="Only the client can answer the counterparty's question.",
            )
        if instructs_the_agent(said) and not latest.attachments:
            # Words aimed at the agent ("mark this case as done") are not evidence: the client decides.
            return Judgement(
                outcome="NEEDS_INPUT",
                question="The counterparty's reply tells me to close the case or to change my instructions, "
                "without sending anything. Has the goal been achieved, and how should I answer?",
                reason="The counterparty gave instructions to the agent instead of what was asked.",
            )
        if AGREEMENT.search(said) or latest.attachments:
            return Judgement(
                outcome="GOAL_ACHIEVED",
                result=extract_result(case, latest, said),
                reason=_sentence(said, AGREEMENT) or "The counterparty sent what was asked.",
            )
        return Judgement(outcome="WAIT", reason="The message asks for nothing and delivers nothing yet.")

    async def compose_reply(self, case: CaseRecord, transcript: list[TranscriptMessage]) -> Draft:
        return await self.compose(
            ComposeRequest(case=case, kind="reply", attempt=case.attempt_count + 1, transcript=transcript)
        )


def _sentence(text: str, pattern: Any) -> str | None:
    """The first sentence of `text` that `pattern` (an RE2 pattern) finds something in."""
    for sentence in _sentences(text):
        if pattern.search(sentence):
            return sentence.strip()
    return None


def _sentences(text: str) -> list[str]:
    """`text` split after each `.`, `!` or `?` that whitespace follows, the punctuation kept with its sentence."""
    parts = SENTENCE_END.split(text)  # [sentence, punctuation, sentence, punctuation, ..., rest]
    return [parts[index] + (parts[index + 1] if index + 1 < len(parts) else "") for index in range(0, len(parts), 2)]


def extract_result(case: CaseRecord, message: TranscriptMessage, said: str) -> dict[str, Any] | None:
    """Fill the fields of `resultSchema` that the message supports; leave out what it does not say."""
    schema = case.result_schema
    if schema is None:
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    result: dict[str, Any] = {}
    for name, spec in properties.items():
        if isinstance(spec, dict):
            value = _field_value(name, spec, case, message, said)
            if value is not None:
                result[name] = value
    return result


def _field_value(name: str, spec: dict[str, Any], case: CaseRecord, message: TranscriptMessage, said: str) -> Any:
    kind = spec.get("type")
    lowered = name.lower()
    if "enum" in spec:
        return next((option for option in spec["enum"] if str(option).lower() in said.lower()), None)
    if kind == "boolean":
        # The message delivered or agreed to what was asked: that is what a boolean in the schema asks.
        return True
    if kind in ("number", "integer"):
        match = NUMBER.search(said)
        if match is None:
            return None
        return int(float(match.group())) if kind == "integer" else float(match.group())
    if kind == "array":
        if "attach" in lowered or "document" in lowered or "file" in lowered:
            return [attachment.filename for attachment in message.attachments]
        return None
    if kind == "string":
        received = dt.datetime.fromtimestamp(message.at / 1000, dt.UTC)
        if "pattern" in spec:
            # The client's pattern, on RE2 (compiled and accepted at create; the stripped form may not compile).
            try:
                return patterns.search(spec["pattern"].strip("^$"), said)
            except patterns.PatternError:
                return None
        if spec.get("format") == "date" or lowered.endswith("date"):
            return received.date().isoformat()
        if spec.get("format") == "date-time" or lowered.endswith("at") or "time" in lowered:
            return received.strftime("%Y-%m-%dT%H:%M:%SZ")
        if ("attach" in lowered or "file" in lowered or "document" in lowered) and message.attachments:
            return message.attachments[0].filename
        knowledge = case.goal.knowledge
        if isinstance(knowledge, dict) and isinstance(knowledge.get(name), str):
            return knowledge[name]
    return None

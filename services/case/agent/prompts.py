"""The prompts of the LLM agent, rendered from versioned template files (`templates/<version>/`).

Every word the model reads comes from those files; this module only fills them in. The key decision: counterparty
text never reaches the model unframed. Each counterparty message (its sender, subject and attachment names
included, since the counterparty chose those too) sits between lines carrying a random boundary drawn for that
request, and the system prompt says text inside is untrusted data, so a message cannot close its own frame and
speak as the case file or as the rules. The case facts travel as one JSON object (the "case file"), which keeps
the client's structured knowledge unambiguous. Output schemas live beside the templates and change with them;
each prompt also carries its schema as text (`schema.md`), which the client adds for a server that cannot be held
to the schema by `response_format` (services.case.agent.completions).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Final

import msgspec

from services.case.agent.completions import ChatMessage, StructuredPrompt
from services.case.agent.port import ComposeRequest, JudgeRequest
from services.case.model import CaseRecord
from shared.contracts.agentmail import TranscriptMessage

PROMPT_VERSION: Final = "v1"
DRAFT_SCHEMA_NAME: Final = "caseflow_email"
JUDGEMENT_SCHEMA_NAME: Final = "caseflow_judgement"
PROBE_SCHEMA_NAME: Final = "caseflow_probe"

Prompt = StructuredPrompt


@cache
def _read(name: str, version: str) -> str:
    return resources.files("services.case.agent").joinpath("templates", version, name).read_text(encoding="utf-8")


def template(name: str, version: str = PROMPT_VERSION) -> Template:
    return Template(_read(name, version).rstrip("\n"))


def output_schema(name: str, version: str = PROMPT_VERSION) -> dict[str, Any]:
    """A fresh copy of an output schema (callers embed the case's resultSchema into it)."""
    schema: dict[str, Any] = json.loads(_read(name, version))
    return schema


def new_boundary() -> str:
    return secrets.token_hex(8)


def compose_prompt(request: ComposeRequest, *, boundary: str | None = None) -> Prompt:
    boundary = boundary or new_boundary()
    step = {"task": "write", "emailKind": request.kind, "emailNumber": request.attempt}
    task = template(f"write_{request.kind}.md").substitute(email_number=request.attempt)
    return _prompt(
        _messages(request.case, request.transcript, step=step, task=task, boundary=boundary),
        DRAFT_SCHEMA_NAME,
        output_schema("draft.schema.json"),
    )


def judge_prompt(request: JudgeRequest, *, boundary: str | None = None) -> Prompt:
    boundary = boundary or new_boundary()
    step = {"task": "judge", "trigger": request.trigger}
    task = template("judge.md").substitute()
    return _prompt(
        _messages(request.case, request.transcript, step=step, task=task, boundary=boundary),
        JUDGEMENT_SCHEMA_NAME,
        judgement_schema(request.case.result_schema),
    )


def probe_prompt() -> Prompt:
    """The start-up probe: the smallest structured request, to learn whether the model answers in JSON."""
    messages = [
        ChatMessage(role="system", content=template("probe_system.md").substitute()),
        ChatMessage(role="user", content=template("probe.md").substitute()),
    ]
    return _prompt(messages, PROBE_SCHEMA_NAME, output_schema("probe.schema.json"))


def _prompt(messages: list[ChatMessage], schema_name: str, schema: dict[str, Any]) -> Prompt:
    note = template("schema.md").substitute(schema_name=schema_name, schema=json.dumps(schema, indent=2))
    return Prompt(messages=messages, schema_name=schema_name, schema=schema, schema_note=note)


def correction(problem: str) -> ChatMessage:
    return ChatMessage(role="user", content=template("correction.md").substitute(problem=problem))


def judgement_schema(result_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The judgement schema with the case's resultSchema embedded as the shape of `result` (extraction)."""
    schema = output_schema("judgement.schema.json")
    if result_schema is None:
        return schema
    embedded = dict(result_schema)
    # Definitions move to the root so the resultSchema's own "#/$defs/..." references still resolve.
    for key in ("$defs", "definitions"):
        if key in embedded:
            schema[key] = embedded.pop(key)
    embedded.pop("$schema", None)
    embedded.pop("$id", None)
    schema["properties"]["result"] = {"anyOf": [embedded, {"type": "null"}]}
    return schema


def _messages(
    case: CaseRecord, transcript: list[TranscriptMessage], *, step: dict[str, Any], task: str, boundary: str
) -> list[ChatMessage]:
    persona = case.sender_persona
    sender = ", ".join(part for part in (persona.name, persona.role, persona.company) if part)
    system = template("system.md").substitute(
        sender=sender,
        client_rules="\n".join(f"- {rule}" for rule in case.constraints or []),
        boundary=boundary,
    )
    context = template("case.md").substitute(
        case_file=json.dumps(case_file(case, step), indent=2, ensure_ascii=False),
        thread="\n\n".join(_render(message, boundary) for message in transcript),
    )
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=f"{context}\n\n{task}")]


def case_file(case: CaseRecord, step: dict[str, Any]) -> dict[str, Any]:
    """What the client told us about the case, as the model reads it (the client's own words are trusted)."""
    knowledge = case.goal.knowledge
    if isinstance(knowledge, dict):
        knowledge = {key: value for key, value in knowledge.items() if key != "additionalHumanContext"}
    return {
        "objective": case.goal.objective,
        "knowledge": knowledge,
        "contextFromClient": client_answers(case),
        "counterparty": msgspec.to_builtins(case.counterparty),
        "sender": msgspec.to_builtins(case.sender_persona),
        "emailsSentSoFar": case.attempt_count,
        "resultSchema": case.result_schema,
        "step": step,
    }


def client_answers(case: CaseRecord) -> list[str]:
    """The client's answers to the agent's questions (`goal.knowledge.additionalHumanContext`), oldest first."""
    knowledge = case.goal.knowledge
    history = knowledge.get("additionalHumanContext") if isinstance(knowledge, dict) else None
    return [str(item) for item in history] if isinstance(history, list) else []


def _render(message: TranscriptMessage, boundary: str) -> str:
    date = dt.datetime.fromtimestamp(message.at / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if message.direction == "outbound":
        return template("outbound.md").substitute(date=date, subject=message.subject, text=message.text)
    attachments = ", ".join(f"{a.filename} ({a.content_type})" for a in message.attachments) or "none"
    return template("inbound.md").substitute(
        boundary=boundary,
        sender=message.from_address,
        date=date,
        subject=message.subject,
        attachments=attachments,
        text=message.text,
    )

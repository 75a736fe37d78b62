"""A fake OpenAI-compatible chat-completions server on loopback, for testing the LLM agent over real HTTP.

`POST /v1/chat/completions` answers with scripted replies queued by the test (a completion, an error status with
`Retry-After`, a delay longer than the client's timeout), in order, optionally only for requests whose body
contains some text (a case's counterparty address) or that ask for one output schema; every request is recorded.
When nothing scripted applies, a stand-in "model" answers: it reads the prompt the way a model would (the case
file JSON, and the thread with its delimited counterparty messages), lets the rules agent decide, and answers in
the requested JSON shape, quoting its citations from the counterparty's message. So the whole stack runs with
`AGENT_BACKEND=openai` against the simulator's scripted counterparties.

It runs uvicorn in a thread of its own (like `receivers.Receiver`), so a case-service process can call it while
the test's event loop is busy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from services.case.agent.port import ComposeRequest, Judgement, JudgeRequest
from services.case.agent.prompts import DRAFT_SCHEMA_NAME, JUDGEMENT_SCHEMA_NAME
from services.case.agent.rules import RulesAgent
from services.case.model import CaseRecord
from shared.contracts.agentmail import AttachmentInfo, TranscriptMessage
from shared.contracts.case import Counterparty, Goal, SenderPersona
from tests.support.processes import free_port
from tests.support.servers import ThreadedServer

type Json = dict[str, Any]

DEFAULT_USAGE: Final = (120, 30)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: a completion whose message is `content`, or an error `status`."""

    status: int = 200
    content: str | None = None
    refusal: str | None = None
    usage: tuple[int, int] = DEFAULT_USAGE
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering (longer than OPENAI_TIMEOUT_SECONDS makes a client timeout).
    delay_seconds: float = 0.0


def completion(answer: Json | str, *, usage: tuple[int, int] = DEFAULT_USAGE) -> Reply:
    """A 200 completion whose message content is `answer` (JSON-encoded when it is a dict)."""
    return Reply(content=answer if isinstance(answer, str) else json.dumps(answer), usage=usage)


def judgement(
    outcome: str,
    *,
    result: Json | None = None,
    citations: list[Json] | None = None,
    reply: str | None = None,
    question: str | None = None,
    reason: str = "Scripted.",
    usage: tuple[int, int] = DEFAULT_USAGE,
) -> Reply:
    answer = {
        "outcome": outcome,
        "reason": reason,
        "result": result,
        "citations": citations or [],
        "reply": reply,
        "question": question,
    }
    return completion(answer, usage=usage)


def quote(field_name: str, words: str) -> Json:
    return {"field": field_name, "quote": words, "attachment": None}


def attachment(field_name: str, filename: str) -> Json:
    return {"field": field_name, "quote": None, "attachment": filename}


def error(status: int, *, retry_after: str | None = None, message: str = "scripted error") -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status=status, content=json.dumps({"error": {"message": message, "type": "fake"}}), headers=headers)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One request the fake received."""

    headers: dict[str, str]
    body: Json

    @property
    def schema_name(self) -> str:
        return str(self.body["response_format"]["json_schema"]["name"])

    @property
    def schema(self) -> Json:
        schema: Json = self.body["response_format"]["json_schema"]["schema"]
        return schema

    def content(self, role: str, index: int = 0) -> str:
        contents = [str(m["content"]) for m in self.body["messages"] if m["role"] == role]
        return contents[index]

    @property
    def system(self) -> str:
        return self.content("system")

    @property
    def user(self) -> str:
        return self.content("user")


type Model = Callable[[ChatCall], Awaitable[Reply]]


@dataclass
class _Script:
    containing: str | None
    schema: str | None
    replies: deque[Reply]

    def applies(self, call: ChatCall, raw: str) -> bool:
        return (
            bool(self.replies)
            and (self.containing is None or self.containing in raw)
            and (self.schema is None or self.schema == call.schema_name)
        )


class FakeOpenAI:
    """Answers scripted replies first (see `script`), then `model` (by default the rules-deciding stand-in)."""

    def __init__(self, *, model: Model | None = None) -> None:
        self.port = free_port()
        self.model = model or rules_model
        self._scripts: list[_Script] = []
        self._calls: list[ChatCall] = []
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply, containing: str | None = None, schema: str | None = None) -> None:
        """Answer the next matching requests with `replies`, in order (then fall back to the model)."""
        with self._lock:
            self._scripts.append(_Script(containing, schema, deque(replies)))

    @property
    def calls(self) -> list[ChatCall]:
        with self._lock:
            return list(self._calls)

    def calls_containing(self, text: str) -> list[ChatCall]:
        return [call for call in self.calls if text in json.dumps(call.body)]

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._calls.clear()

    async def _app(self, scope: Json, receive: Callable[[], Awaitable[Json]], send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            await _respond(send, 404, {"error": {"message": "not found"}})
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        call = ChatCall(headers=headers, body=json.loads(raw))
        text = raw.decode()
        with self._lock:
            self._calls.append(call)
            script = next((s for s in self._scripts if s.applies(call, text)), None)
            reply = script.replies.popleft() if script is not None else None
        if reply is None:
            reply = await self.model(call)
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200:
            await _respond(send, reply.status, json.loads(reply.content or "{}"), reply.headers)
            return
        prompt_tokens, completion_tokens = reply.usage
        body = {
            "id": f"chatcmpl-{len(self._calls)}",
            "object": "chat.completion",
            "created": int(dt.datetime.now(dt.UTC).timestamp()),
            "model": call.body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": reply.refusal},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        await _respond(send, 200, body, reply.headers)

    def __enter__(self) -> FakeOpenAI:
        self._server = ThreadedServer(self._app, port=self.port, name=f"fake-openai-{self.port}")
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.stop()


async def _respond(send: Any, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


# ---- the stand-in model ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadPrompt:
    """What the stand-in model understood from a prompt."""

    case_file: Json
    case: CaseRecord
    transcript: list[TranscriptMessage]


_CASE_FILE: Final = re.compile(r"```json\n(.*?)\n```", re.S)
_BOUNDARY: Final = re.compile(r"<<<UNTRUSTED COUNTERPARTY MESSAGE (\w+)")


def read_prompt(call: ChatCall) -> ReadPrompt:
    """The case file and the thread, as a model reading the prompt would take them in."""
    user = call.user
    found = _CASE_FILE.search(user)
    assert found is not None, "the prompt carries no case file"
    case_file: Json = json.loads(found.group(1))
    boundary = _BOUNDARY.search(call.system)
    assert boundary is not None, "the system prompt names no boundary for counterparty messages"
    return ReadPrompt(case_file=case_file, case=_case(case_file), transcript=thread(user, boundary.group(1)))


def thread(user_prompt: str, boundary: str) -> list[TranscriptMessage]:
    """The messages framed in a prompt, oldest first."""
    b = re.escape(boundary)
    block = re.compile(
        r"<<<OUR EMAIL \(written by you earlier\)\nDate: (?P<our_date>[^\n]*)\nSubject: (?P<our_subject>[^\n]*)\n"
        r"Body:\n(?P<our_text>.*?)\nOUR EMAIL>>>"
        rf"|<<<UNTRUSTED COUNTERPARTY MESSAGE {b}\nFrom: (?P<sender>[^\n]*)\nDate: (?P<date>[^\n]*)\n"
        rf"Subject: (?P<subject>[^\n]*)\nAttachments: (?P<attachments>[^\n]*)\nBody:\n(?P<text>.*?)\n"
        rf"UNTRUSTED COUNTERPARTY MESSAGE {b}>>>",
        re.S,
    )
    messages = []
    for index, match in enumerate(block.finditer(user_prompt)):
        if match.group("our_text") is not None:
            messages.append(
                TranscriptMessage(
                    direction="outbound",
                    message_id=f"<out-{index}@fake>",
                    from_address="agent@fake",
                    to=[],
                    subject=match.group("our_subject"),
                    text=match.group("our_text"),
                    at=_ms(match.group("our_date")),
                )
            )
            continue
        files = [] if match.group("attachments") == "none" else match.group("attachments").split(", ")
        messages.append(
            TranscriptMessage(
                direction="inbound",
                message_id=f"<in-{index}@fake>",
                from_address=match.group("sender"),
                to=[],
                subject=match.group("subject"),
                text=match.group("text"),
                at=_ms(match.group("date")),
                attachments=[
                    AttachmentInfo(
                        attachment_id=f"att-{index}-{n}",
                        filename=name.rsplit(" (", 1)[0],
                        size=0,
                        content_type="application/octet-stream",
                    )
                    for n, name in enumerate(files)
                ],
            )
        )
    return messages


def _ms(iso: str) -> int:
    return int(dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp() * 1000)


def _case(case_file: Json) -> CaseRecord:
    knowledge = case_file["knowledge"]
    context = case_file["contextFromClient"]
    if context:
        base = knowledge if isinstance(knowledge, dict) else ({"text": knowledge} if knowledge else {})
        knowledge = {**base, "additionalHumanContext": context}
    return CaseRecord(
        case_id="fake",
        client_id="fake",
        status="RUNNING",
        created_at=0,
        updated_at=0,
        next_action_at=0,
        max_attempts=3,
        follow_up_delay_hours=72,
        channel="EMAIL",
        goal=Goal(objective=case_file["objective"], knowledge=knowledge),
        counterparty=msgspec.convert(case_file["counterparty"], Counterparty),
        sender_persona=msgspec.convert(case_file["sender"], SenderPersona),
        result_schema=case_file["resultSchema"],
        attempt_count=case_file["emailsSentSoFar"],
    )


async def rules_model(call: ChatCall) -> Reply:
    """A model that decides like the rules agent and answers in the requested shape, citing honestly."""
    prompt = read_prompt(call)
    step = prompt.case_file["step"]
    agent = RulesAgent()
    if call.schema_name == DRAFT_SCHEMA_NAME:
        request = ComposeRequest(
            case=prompt.case, kind=step["emailKind"], attempt=step["emailNumber"], transcript=prompt.transcript
        )
        draft = await agent.compose(request)
        return completion({"subject": draft.subject, "body": draft.text, "question": None})
    assert call.schema_name == JUDGEMENT_SCHEMA_NAME, call.schema_name
    decided = await agent.judge(JudgeRequest(case=prompt.case, transcript=prompt.transcript, trigger=step["trigger"]))
    return completion(_answer(decided, prompt.transcript))


def _answer(decided: Judgement, transcript: list[TranscriptMessage]) -> Json:
    citations: list[Json] = []
    if decided.outcome == "GOAL_ACHIEVED":
        latest = next(message for message in reversed(transcript) if message.direction == "inbound")
        # The rules agent's reason is the counterparty's own sentence when words decided it, else the attachment.
        in_their_words = " ".join(decided.reason.split()) in " ".join(latest.text.split())
        fields = list(decided.result or {}) or ["goal"]
        citations = [
            quote(name, decided.reason) if in_their_words else attachment(name, latest.attachments[0].filename)
            for name in fields
        ]
    return {
        "outcome": decided.outcome,
        "reason": decided.reason,
        "result": decided.result if decided.outcome == "GOAL_ACHIEVED" else None,
        "citations": citations,
        "reply": decided.reply.text if decided.reply else None,
        "question": decided.question,
    }

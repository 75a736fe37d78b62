"""A fake OpenAI-compatible chat-completions server on loopback, for testing the LLM agent over real HTTP.

`POST /v1/chat/completions` answers with scripted replies queued by the test (a completion, an error status with
`Retry-After`, a delay longer than the client's timeout), in order, optionally only for requests whose body
contains some text (a case's counterparty address) or that ask for one output schema; every request is recorded.
When nothing scripted applies, a stand-in "model" answers: it reads the prompt the way a model would (the case
file JSON, and the thread with its delimited counterparty messages), lets the rules agent decide, and answers in
the requested JSON shape, quoting its citations from the counterparty's message. So the whole stack runs with
`AGENT_BACKEND=openai` against the simulator's scripted counterparties.

Real servers differ in the request shapes they take, and the fake can behave like each family (`ServerBehaviour`,
chosen per test and changeable while it runs): which `response_format` types it accepts, how it refuses the others
(a 400, or llama-cpp-python's 500 carrying a validation error), whether it wants `max_completion_tokens` (400 on
`max_tokens`, like OpenAI's reasoning models), and whether its model writes prose around the JSON. Without
`json_schema` the stand-in model knows the answer's shape only from the schema written into the prompt.

It runs uvicorn in a thread of its own (like `receivers.Receiver`), so a case-service process can call it while
the test's event loop is busy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import pytest

from deploy.processes import free_port
from services.case.agent.completions import MODEL
from services.case.agent.port import ComposeRequest, Judgement, JudgeRequest
from services.case.agent.prompts import DRAFT_SCHEMA_NAME, JUDGEMENT_SCHEMA_NAME, PROBE_SCHEMA_NAME
from services.case.agent.rules import RulesAgent
from services.case.model import CaseRecord
from shared.contracts.agentmail import AttachmentInfo, TranscriptMessage
from shared.contracts.case import Counterparty, Goal, SenderPersona
from shared.failures import DEPENDENCY_PROBLEMS
from tests.support.servers import ThreadedServer

type Json = dict[str, Any]

DEFAULT_USAGE: Final = (120, 30)
ALL_FORMATS: Final = frozenset({"json_schema", "json_object", "text"})


@dataclass(frozen=True, slots=True)
class ServerBehaviour:
    """How one family of OpenAI-compatible servers treats the request shape."""

    name: str
    # The `response_format` types it takes ("text": none given, or {"type": "text"}).
    accepts: frozenset[str] = ALL_FORMATS
    # How it refuses another type: OpenAI-style 400, or llama-cpp-python's 500 with a validation error.
    refuses_with: Literal["400", "500-validation"] = "400"
    # It holds the model to `schema` in {"type": "json_object", "schema": ...} (llama-cpp-python, llama-server).
    json_object_schema: bool = True
    # 400 on `max_tokens`, asking for `max_completion_tokens` (OpenAI's reasoning models).
    wants_max_completion_tokens: bool = False
    # Without a response_format, its model writes a sentence before and after the JSON.
    prose_around_json: bool = False


OPENAI_LIKE: Final = ServerBehaviour("openai-like")  # OpenAI, vLLM, Ollama >= 0.5, llama-server, LM Studio
REASONING_MODEL: Final = ServerBehaviour("reasoning-model", wants_max_completion_tokens=True)
LLAMA_CPP_PYTHON: Final = ServerBehaviour(
    "llama-cpp-python", accepts=frozenset({"json_object", "text"}), refuses_with="500-validation"
)
JSON_OBJECT_ONLY: Final = ServerBehaviour(
    "json-object-only", accepts=frozenset({"json_object", "text"}), json_object_schema=False
)
TEXT_ONLY: Final = ServerBehaviour("text-only", accepts=frozenset({"text"}), prose_around_json=True)
BEHAVIOURS: Final = (OPENAI_LIKE, REASONING_MODEL, LLAMA_CPP_PYTHON, JSON_OBJECT_ONLY, TEXT_ONLY)


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
    def format_type(self) -> str:
        response_format = self.body.get("response_format")
        return str(response_format["type"]) if response_format else "text"

    @property
    def schema_name(self) -> str | None:
        """The schema the model was given: by `json_schema`, else by name in the prompt's schema note."""
        if self.format_type == "json_schema":
            return str(self.body["response_format"]["json_schema"]["name"])
        named = _SCHEMA_NOTE.search(self.system)
        return named.group(1) if named else None

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
    """Refuses what `behaviour` does not take, then answers scripted replies (see `script`), then `model` (by
    default the rules-deciding stand-in)."""

    def __init__(self, *, model: Model | None = None, behaviour: ServerBehaviour = OPENAI_LIKE) -> None:
        self.port = free_port()
        self.model = model or rules_model
        self.behaviour = behaviour
        self._first_behaviour = behaviour
        self._scripts: list[_Script] = []
        self._calls: list[ChatCall] = []
        self._answered: list[tuple[str | None, int]] = []  # (schema name, status) of each answer sent
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

    def answered(self, schema_name: str) -> bool:
        """Whether a request for `schema_name` got a completion (not a refusal or an error)."""
        with self._lock:
            return (schema_name, 200) in self._answered

    def calls_containing(self, text: str) -> list[ChatCall]:
        return [call for call in self.calls if text in json.dumps(call.body)]

    def reset(self) -> None:
        """Back to how it started: no scripts, no calls seen, the behaviour it was built with."""
        self.behaviour = self._first_behaviour
        with self._lock:
            self._scripts.clear()
            self._calls.clear()
            self._answered.clear()

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
        behaviour = self.behaviour
        refused = _refusal(behaviour, call)
        with self._lock:
            self._calls.append(call)
            script = None if refused else next((s for s in self._scripts if s.applies(call, text)), None)
            reply = refused or (script.replies.popleft() if script is not None else None)
        if reply is None:
            reply = await self.model(_as_the_model_sees_it(behaviour, call))
            if behaviour.prose_around_json and call.format_type == "text" and reply.content:
                reply = dataclasses.replace(reply, content=f"{PROSE_BEFORE}\n\n{reply.content}\n\n{PROSE_AFTER}")
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        with self._lock:
            self._answered.append((call.schema_name, reply.status))
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


PROSE_BEFORE: Final = "Sure! Here is the JSON you asked for:"
PROSE_AFTER: Final = "Let me know if you need anything else."
_SCHEMA_NOTE: Final = re.compile(r'follows this JSON schema \("(\w+)"\)')


def _as_the_model_sees_it(behaviour: ServerBehaviour, call: ChatCall) -> ChatCall:
    """A server that ignores json_object's `schema` does not pass it on to the model."""
    if call.format_type != "json_object" or behaviour.json_object_schema:
        return call
    return ChatCall(headers=call.headers, body={**call.body, "response_format": {"type": "json_object"}})


def _refusal(behaviour: ServerBehaviour, call: ChatCall) -> Reply | None:
    """The error the server answers a request shape it does not take with, in its own words."""
    kind = call.format_type
    if kind not in behaviour.accepts:
        allowed = " or ".join(f"'{name}'" for name in sorted(behaviour.accepts))
        if behaviour.refuses_with == "500-validation":
            # llama-cpp-python validates the body inside its route handler and answers any exception with 500.
            detail = [
                {
                    "type": "literal_error",
                    "loc": ("body", "response_format", "type"),
                    "msg": f"Input should be {allowed}",
                    "input": kind,
                    "ctx": {"expected": allowed},
                }
            ]
            body = {"message": str(detail), "type": "internal_server_error", "param": None, "code": None}
            return Reply(status=500, content=json.dumps({"error": body}))
        message = f"Invalid value for 'response_format.type': '{kind}' is not supported, use {allowed}."
        body = {"message": message, "type": "invalid_request_error", "param": "response_format", "code": None}
        return Reply(status=400, content=json.dumps({"error": body}))
    if behaviour.wants_max_completion_tokens and "max_tokens" in call.body:
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        )
        body = {
            "message": message,
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
        return Reply(status=400, content=json.dumps({"error": body}))
    return None


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


UNSURE_OF_THE_FORMAT: Final = "Happy to help! Could you tell me what format you would like the answer in?"


def _known_schema(call: ChatCall) -> str | None:
    """The answer's shape as the model knows it: by `json_schema`, the prompt's schema note, or a json_object
    `schema` the server holds the model to (recognised by its fields)."""
    name = call.schema_name
    if name is None and call.format_type == "json_object":
        properties = set((call.body["response_format"].get("schema") or {}).get("properties", {}))
        names = {"ok": PROBE_SCHEMA_NAME, "subject": DRAFT_SCHEMA_NAME, "outcome": JUDGEMENT_SCHEMA_NAME}
        name = next((names[field] for field in names if field in properties), None)
    return name


async def rules_model(call: ChatCall) -> Reply:
    """A model that decides like the rules agent and answers in the requested shape, citing honestly."""
    schema_name = _known_schema(call)
    if schema_name is None:
        return completion(UNSURE_OF_THE_FORMAT)
    if schema_name == PROBE_SCHEMA_NAME:
        return completion({"ok": True}, usage=(40, 5))
    prompt = read_prompt(call)
    step = prompt.case_file["step"]
    agent = RulesAgent()
    if schema_name == DRAFT_SCHEMA_NAME:
        request = ComposeRequest(
            case=prompt.case, kind=step["emailKind"], attempt=step["emailNumber"], transcript=prompt.transcript
        )
        draft = await agent.compose(request)
        return completion({"subject": draft.subject, "body": draft.text, "question": None})
    assert schema_name == JUDGEMENT_SCHEMA_NAME, schema_name
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


# ---- fixtures of the modules that run the agent against this server (tests/conftest.py loads them) ----------


class Sleeps:
    """Records the waits the client asks for and returns at once (tests assert behaviour, not durations)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_openai_server.reset()
    yield fake_openai_server
    fake_openai_server.reset()
    DEPENDENCY_PROBLEMS.clear(MODEL)  # one registry per process: a test's report must not leak into the next


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()

"""The chat-completions client: `POST {OPENAI_BASE_URL}/chat/completions` over one `httpx.AsyncClient` per process.

The key decision: servers differ in what they accept (OpenAI, vLLM, Ollama, llama.cpp's llama-server,
llama-cpp-python, LM Studio), so the client learns the request shape once per process (`ServerDialect`) instead
of breaking on it. Structured output degrades `json_schema` → `json_object` with the schema (llama-cpp-python's
form) → plain text, with the schema written into the prompt whenever the server is not held to it by
`json_schema`; the completion cap is `max_tokens` until a server asks for `max_completion_tokens`. A refusal that
names `response_format` or the cap moves to the next shape and the same request is sent again at once; the shape
is settled by the first answer and logged. Either can be pinned with a setting (`OPENAI_STRUCTURED_OUTPUT`,
`OPENAI_COMPLETION_CAP_FIELD`).

Failures, classified once here (shared.failures):
- a 429, a 5xx, a timeout or a connection failure is retried up to `OPENAI_MAX_RETRIES` times with exponential
  backoff and full jitter, waiting exactly what `Retry-After` (or OpenAI's `retry-after-ms`) asks; a wait longer
  than `OPENAI_RETRY_MAX_SECONDS` ends the retries at once. Then `ModelUnavailable` (`Transient`).
- a refusal of *this case's* request (its prompt is longer than the model's context, its content was flagged, a
  resultSchema the settled mode cannot take) raises `ModelRequestRejected`: the agent asks the client.
- any other refusal (a 4xx, or a 5xx whose body says the request was invalid, as llama-cpp-python answers a
  request it cannot validate) is our configuration: `ModelMisconfigured` (`Misconfigured`), reported in
  `DEPENDENCY_PROBLEMS` under "model" (so `/readyz` names it) with an error log, until the next answer clears it.
Only plain httpx and msgspec: the OpenAI SDK would add a dependency for one endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import msgspec

from services.case.agent.port import TokenUsage
from shared.failures import DEPENDENCY_PROBLEMS, Misconfigured, Transient
from shared.retry_after import retry_after_seconds
from shared.settings import CaseSettings

log = logging.getLogger("caseflow.case.agent.completions")

type Sleep = Callable[[float], Awaitable[None]]
type StructuredOutput = Literal["json_schema", "json_object", "text"]
type CapField = Literal["max_tokens", "max_completion_tokens"]

MODEL: Final = "model"  # the dependency's name in DEPENDENCY_PROBLEMS, /readyz and the metric
STRUCTURED_OUTPUTS: Final[tuple[StructuredOutput, ...]] = ("json_schema", "json_object", "text")  # best first
# A conservative estimate: English runs about four bytes a token; code, JSON and non-Latin text run fewer.
BYTES_PER_TOKEN: Final = 3
_MESSAGE_OVERHEAD_TOKENS: Final = 4

_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
_KEY_SHAPED: Final = re.compile(r"sk-[\w*\-]+")
MAX_REASON_CHARS: Final = 500
# What a refusal is about, read from the server's error message (servers agree on words, not on codes).
_CONTEXT: Final = re.compile(
    r"context.(length|window|size)|too many tokens|too long|exceeds? the (available )?context|reduce the length",
    re.I,
)
_FLAGGED: Final = re.compile(r"flagged|content.?(policy|filter|management)|usage polic|safety system", re.I)
_UNSUPPORTED: Final = re.compile(r"not supported|unsupported|not permitted|unrecognized|unknown", re.I)
_RESPONSE_FORMAT: Final = re.compile(r"response_format|json_schema|json_object|schema", re.I)
# A 5xx is an outage unless its body says the request itself was invalid (llama-cpp-python answers a request
# its pydantic model rejects with a 500 carrying the validation error).
_INVALID_REQUEST: Final = re.compile(
    r"validation error|literal_error|input should be|field required|extra inputs are not permitted|"
    r"invalid_request_error|unsupported parameter|unrecognized request argument|'loc': \('body'",
    re.I,
)


class ChatMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(msgspec.Struct, frozen=True):
    name: str
    # The schema embeds the client's resultSchema, which need not fit OpenAI's strict subset (every property
    # required, no `format`, ...): the schema guides the model and the agent validates the answer itself.
    schema: dict[str, Any]
    strict: bool = False


class JsonSchemaResponseFormat(msgspec.Struct, frozen=True):
    json_schema: JsonSchemaFormat
    type: Literal["json_schema"] = "json_schema"


class JsonObjectResponseFormat(msgspec.Struct, frozen=True):
    # llama-cpp-python and llama-server constrain the output to `schema`; others ignore it (the prompt has it).
    schema: dict[str, Any]
    type: Literal["json_object"] = "json_object"


class ChatRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    model: str
    messages: list[ChatMessage]
    response_format: JsonSchemaResponseFormat | JsonObjectResponseFormat | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AssistantMessage(msgspec.Struct, frozen=True):
    content: str | None = None
    refusal: str | None = None


class Choice(msgspec.Struct, frozen=True):
    message: AssistantMessage
    finish_reason: str | None = None


class ChatResponse(msgspec.Struct, frozen=True):
    choices: list[Choice]
    usage: Usage | None = None
    model: str = ""


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str = ""
    code: str | int | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail | str | None = None
    # FastAPI-style servers answer {"detail": ...}.
    detail: Any = None


class Completion(msgspec.Struct, frozen=True):
    """What the model answered: its text (None when it refused or said nothing) and what it cost."""

    content: str | None
    usage: TokenUsage
    refusal: str | None = None
    finish_reason: str | None = None
    mode: StructuredOutput = "json_schema"


@dataclass(frozen=True, slots=True)
class StructuredPrompt:
    """What one request asks for: the conversation, and the shape of the answer.

    `schema_note` is the prompt's own text giving `schema` to the model (templates/<version>/schema.md); it is
    added to the system message whenever the server is not held to the schema by `json_schema`."""

    messages: list[ChatMessage]
    schema_name: str
    schema: dict[str, Any]
    schema_note: str


class ModelUnavailable(Transient):
    """Transient failures (429, 5xx, timeouts, connection errors) outlasted the retries."""

    def __init__(self, reason: str) -> None:
        super().__init__(MODEL, reason)


class ModelRequestRejected(Exception):
    """The server refused this case's request (too long for the model, flagged content, a schema it cannot take):
    retrying the same request cannot fix it, and no other case is concerned."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"model server answered {status}: {message}")
        self.status = status
        self.message = message


class ModelMisconfigured(Misconfigured):
    """The server refuses the requests this process sends (key, model name, a pinned request shape): the
    operator's to fix; work waits and resumes with the next answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(MODEL, f"the model server refuses our requests ({status}: {message})")
        self.status = status
        self.message = message


type Concern = Literal["context", "flagged", "cap_field", "response_format", "other"]


def refusal_concern(message: str, *, cap_field: CapField) -> Concern:
    """What a refused request is about, from the server's error message (checked in this order)."""
    if _CONTEXT.search(message):
        return "context"
    if _FLAGGED.search(message):
        return "flagged"
    other = "max_completion_tokens" if cap_field == "max_tokens" else "max_tokens"
    if other in message or (cap_field in message and _UNSUPPORTED.search(message)):
        return "cap_field"
    if _RESPONSE_FORMAT.search(message):
        return "response_format"
    return "other"


def is_refusal(status: int, message: str) -> bool:
    """A 4xx other than 408/409/429, or a 5xx whose body says the request was invalid."""
    if status in _RETRYABLE_STATUSES:
        return False
    if status < 500:
        return True
    return bool(_INVALID_REQUEST.search(message))


class ServerDialect:
    """What this process has learnt about the server's request shape; settled by the first answer.

    Before it is settled, a refusal naming `response_format` moves to the next structured-output mode for good
    (when the mode is not pinned by a setting). After it, such a refusal concerns one request's schema (a
    resultSchema the server cannot compile): that request alone tries the remaining modes."""

    def __init__(self, settings: CaseSettings) -> None:
        pinned_output = settings.openai_structured_output
        pinned_limit = settings.openai_completion_cap_field
        self.output_pinned = pinned_output != "auto"
        self.limit_pinned = pinned_limit != "auto"
        self.structured_output: StructuredOutput = "json_schema" if pinned_output == "auto" else pinned_output
        self.cap_field: CapField = "max_tokens" if pinned_limit == "auto" else pinned_limit
        self.settled = False

    def next_mode(self, after: StructuredOutput) -> StructuredOutput | None:
        index = STRUCTURED_OUTPUTS.index(after)
        return STRUCTURED_OUTPUTS[index + 1] if index + 1 < len(STRUCTURED_OUTPUTS) else None

    def degrade(self, refused: StructuredOutput, *, why: str) -> bool:
        """Use the next mode from now on, if `refused` is still the mode and it is ours to change."""
        following = self.next_mode(refused)
        if self.output_pinned or following is None:
            return False
        if self.structured_output == refused:
            log.warning(
                "structured output mode changed",
                extra={"refused_mode": refused, "structured_output": following, "why": why[:300]},
            )
            self.structured_output = following
            self.settled = False
        return True

    def switch_cap_field(self, refused: CapField) -> bool:
        """Name the completion cap the other way from now on, if `refused` is still ours and not pinned."""
        if self.limit_pinned:
            return False
        if self.cap_field == refused:
            following: CapField = "max_completion_tokens" if refused == "max_tokens" else "max_tokens"
            log.warning("completion cap field changed", extra={"refused": refused, "cap_field": following})
            self.cap_field = following
            self.settled = False
        return True

    def settle(self, mode: StructuredOutput) -> None:
        if self.settled or mode != self.structured_output:
            return
        self.settled = True
        log.info(
            "model request shape settled",
            extra={
                "structured_output": mode,
                "cap_field": self.cap_field,
                "how": "setting" if self.output_pinned else "learnt from the server",
            },
        )


def estimated_tokens(prompt: StructuredPrompt, mode: StructuredOutput) -> int:
    """An upper-end estimate of the prompt's tokens as sent in `mode` (the schema counts either way: in the
    prompt, or compiled into the server's grammar)."""
    size = sum(len(message.content.encode()) for message in prompt.messages)
    size += len(msgspec.json.encode(prompt.schema))
    if mode != "json_schema":
        size += len(prompt.schema_note.encode())
    return -(-size // BYTES_PER_TOKEN) + _MESSAGE_OVERHEAD_TOKENS * len(prompt.messages)


class ChatClient:
    def __init__(self, settings: CaseSettings, *, sleep: Sleep = asyncio.sleep) -> None:
        headers = {"Authorization": f"Bearer {settings.openai_api_key}"} if settings.openai_api_key else {}
        self._http = httpx.AsyncClient(
            base_url=settings.openai_base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.openai_timeout_seconds),
        )
        self._model = settings.openai_model
        self._api_key = settings.openai_api_key
        self._max_tokens = settings.openai_max_output_tokens
        self._max_retries = settings.openai_max_retries
        self._base_delay = settings.openai_retry_base_seconds
        self._max_delay = settings.openai_retry_max_seconds
        self._sleep = sleep
        self.dialect = ServerDialect(settings)

    @property
    def model(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._http.aclose()

    def _request(self, prompt: StructuredPrompt, mode: StructuredOutput) -> ChatRequest:
        messages = prompt.messages
        response_format: JsonSchemaResponseFormat | JsonObjectResponseFormat | None = None
        if mode == "json_schema":
            response_format = JsonSchemaResponseFormat(JsonSchemaFormat(name=prompt.schema_name, schema=prompt.schema))
        else:
            if mode == "json_object":
                response_format = JsonObjectResponseFormat(schema=prompt.schema)
            system, *rest = messages
            messages = [ChatMessage(role=system.role, content=f"{system.content}\n\n{prompt.schema_note}"), *rest]
        limit = self.dialect.cap_field
        return ChatRequest(
            model=self._model,
            messages=messages,
            response_format=response_format,
            max_tokens=self._max_tokens if limit == "max_tokens" else None,
            max_completion_tokens=self._max_tokens if limit == "max_completion_tokens" else None,
        )

    async def complete(self, prompt: StructuredPrompt) -> Completion:
        """One answer, in the dialect's mode (or, for a schema the server refuses, the next mode that takes it)."""
        mode = self.dialect.structured_output
        switched_limit = False  # a server refusing both cap fields must not make us alternate forever
        while True:
            limit = self.dialect.cap_field
            response = await self._post(msgspec.json.encode(self._request(prompt, mode)))
            if response.is_success:
                DEPENDENCY_PROBLEMS.clear(MODEL)
                self.dialect.settle(mode)
                return _completion(response, mode)
            message = self._shown(_error_message(response))
            # 413: this request's body is too large for the server, whatever its message says.
            concern = "context" if response.status_code == 413 else refusal_concern(message, cap_field=limit)
            match concern:
                case "context" | "flagged":
                    raise ModelRequestRejected(response.status_code, message)
                case "cap_field" if not switched_limit and self.dialect.switch_cap_field(limit):
                    switched_limit = True
                    continue
                case "response_format" if not self.dialect.settled and self.dialect.degrade(mode, why=message):
                    mode = self.dialect.structured_output
                    continue
                case "response_format" if self.dialect.settled:
                    # The settled mode took other requests: this one's schema is the problem.
                    log.warning(
                        "model server refused this request's schema",
                        extra={"structured_output": mode, "status": response.status_code},
                    )
                    following = None if self.dialect.output_pinned else self.dialect.next_mode(mode)
                    if following is None:
                        raise ModelRequestRejected(response.status_code, message)
                    mode = following
                    continue
                case _:
                    raise self._misconfigured(response.status_code, message, mode)

    def _shown(self, message: str) -> str:
        """The server's words as we repeat them (in /readyz, which is public, and in questions to the client):
        without our key or anything shaped like one (some servers echo part of it), and bounded."""
        if self._api_key:
            message = message.replace(self._api_key, "[redacted]")
        return _KEY_SHAPED.sub("sk-[redacted]", message)[:MAX_REASON_CHARS]

    def _misconfigured(self, status: int, message: str, mode: StructuredOutput) -> ModelMisconfigured:
        failure = ModelMisconfigured(status, message)
        # An error when the problem appears or changes; each redelivery and probe that meets it again, a warning.
        known = DEPENDENCY_PROBLEMS.current().get(MODEL) == failure.reason
        DEPENDENCY_PROBLEMS.report(MODEL, failure.reason)
        (log.warning if known else log.error)(
            "model server refuses our requests; cases wait until it is fixed",
            extra={
                "status": status,
                "reason": message,
                "structured_output": mode,
                "cap_field": self.dialect.cap_field,
                "model": self._model,
            },
        )
        return failure

    async def _post(self, content: bytes) -> httpx.Response:
        """The server's answer: a success or a refusal; transient trouble is retried, then raises."""
        headers = {"Content-Type": "application/json"}
        for retry in range(self._max_retries + 1):
            last = retry == self._max_retries
            try:
                response = await self._http.post("/chat/completions", content=content, headers=headers)
            except httpx.TransportError as exc:  # timeouts included
                if last:
                    raise ModelUnavailable(f"{type(exc).__name__} after {retry + 1} attempts") from exc
                await self._wait(retry, None, reason=type(exc).__name__)
                continue
            if response.is_success or is_refusal(response.status_code, _error_message(response)):
                return response
            retry_after = retry_after_seconds(response.headers)
            if last or (retry_after is not None and retry_after > self._max_delay):
                message = _error_message(response)
                raise ModelUnavailable(f"{response.status_code} {message} after {retry + 1} attempts")
            await self._wait(retry, retry_after, reason=str(response.status_code))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _wait(self, retry: int, retry_after: float | None, *, reason: str) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            # Full jitter over an exponential ceiling keeps many replicas from retrying in lockstep.
            delay = random.uniform(0, min(self._max_delay, self._base_delay * 2**retry))  # noqa: S311
        log.warning(
            "model call failed; retrying",
            extra={"reason": reason, "retry": retry + 1, "delay_seconds": round(delay, 3)},
        )
        await self._sleep(delay)


def _completion(response: httpx.Response, mode: StructuredOutput) -> Completion:
    try:
        body = msgspec.json.decode(response.content, type=ChatResponse)
    except msgspec.DecodeError as exc:
        # A 200 we cannot read is a server problem, like a 5xx: let redelivery try again later.
        raise ModelUnavailable(f"unreadable chat completion: {exc}") from exc
    if not body.choices:
        raise ModelUnavailable("the chat completion has no choices")
    choice = body.choices[0]
    usage = body.usage or Usage()
    return Completion(
        content=choice.message.content,
        usage=TokenUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
        refusal=choice.message.refusal,
        finish_reason=choice.finish_reason,
        mode=mode,
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(response.content, type=ErrorBody)
    except msgspec.DecodeError:
        return response.reason_phrase or "error"
    if isinstance(body.error, ErrorDetail):
        return body.error.message or str(body.error.code or response.reason_phrase)
    if body.error:
        return body.error
    if body.detail is not None:
        return body.detail if isinstance(body.detail, str) else msgspec.json.encode(body.detail).decode()
    return response.reason_phrase or "error"

"""The chat-completions client: `POST {OPENAI_BASE_URL}/chat/completions` over one `httpx.AsyncClient` per process.

Retry policy (the one decision callers rely on): a 429, a 5xx, a timeout or a connection failure is retried up to
`OPENAI_MAX_RETRIES` times with exponential backoff and full jitter, waiting exactly what `Retry-After` (or
OpenAI's `retry-after-ms`) asks; a wait longer than `OPENAI_RETRY_MAX_SECONDS` ends the retries at once. Retries
exhausted raise `ModelUnavailable`, an ordinary exception, so the worker's consumer redelivers the message later
with its own backoff. Any other 4xx raises `ModelRequestRejected`: retrying the same request cannot fix it.
Only plain httpx and msgspec: the OpenAI SDK would add a dependency for one endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import httpx
import msgspec

from services.case.agent.port import TokenUsage
from shared.retry_after import retry_after_seconds
from shared.settings import CaseSettings

log = logging.getLogger("caseflow.case.agent.completions")

type Sleep = Callable[[float], Awaitable[None]]

_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})


class ChatMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(msgspec.Struct, frozen=True):
    name: str
    # The schema embeds the client's resultSchema, which need not fit OpenAI's strict subset (every property
    # required, no `format`, ...): the schema guides the model and the agent validates the answer itself.
    schema: dict[str, Any]
    strict: bool = False


class ResponseFormat(msgspec.Struct, frozen=True):
    json_schema: JsonSchemaFormat
    type: Literal["json_schema"] = "json_schema"


class ChatRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    model: str
    messages: list[ChatMessage]
    response_format: ResponseFormat
    # `max_tokens` rather than `max_completion_tokens`: Ollama, vLLM and llama.cpp all read it.
    max_tokens: int | None = None


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


class Completion(msgspec.Struct, frozen=True):
    """What the model answered: its text (None when it refused or said nothing) and what it cost."""

    content: str | None
    usage: TokenUsage
    refusal: str | None = None
    finish_reason: str | None = None


class ModelUnavailable(Exception):
    """Transient failures (429, 5xx, timeouts, connection errors) outlasted the retries."""


class ModelRequestRejected(Exception):
    """The server refused the request for a reason retrying will not fix (a 4xx other than 408/409/429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"model server answered {status}: {message}")
        self.status = status
        self.message = message


class ChatClient:
    def __init__(self, settings: CaseSettings, *, sleep: Sleep = asyncio.sleep) -> None:
        headers = {"Authorization": f"Bearer {settings.openai_api_key}"} if settings.openai_api_key else {}
        self._http = httpx.AsyncClient(
            base_url=settings.openai_base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.openai_timeout_seconds),
        )
        self._model = settings.openai_model
        self._max_tokens = settings.openai_max_output_tokens
        self._max_retries = settings.openai_max_retries
        self._base_delay = settings.openai_retry_base_seconds
        self._max_delay = settings.openai_retry_max_seconds
        self._sleep = sleep

    @property
    def model(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, messages: list[ChatMessage], *, schema_name: str, schema: dict[str, Any]) -> Completion:
        request = ChatRequest(
            model=self._model,
            messages=messages,
            response_format=ResponseFormat(json_schema=JsonSchemaFormat(name=schema_name, schema=schema)),
            max_tokens=self._max_tokens,
        )
        response = await self._post(msgspec.json.encode(request))
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
        )

    async def _post(self, content: bytes) -> httpx.Response:
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
            if response.is_success:
                return response
            message = _error_message(response)
            if response.status_code not in _RETRYABLE_STATUSES and response.status_code < 500:
                raise ModelRequestRejected(response.status_code, message)
            retry_after = retry_after_seconds(response.headers)
            if last or (retry_after is not None and retry_after > self._max_delay):
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


def _error_message(response: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(response.content, type=ErrorBody)
    except msgspec.DecodeError:
        return response.reason_phrase or "error"
    if isinstance(body.error, ErrorDetail):
        return body.error.message or str(body.error.code or response.reason_phrase)
    return body.error or response.reason_phrase or "error"

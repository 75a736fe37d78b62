"""The typed async AgentMail client: one `httpx.AsyncClient` per process, msgspec models, bounded retries.

Every failure is classified here, once, into a failure class of shared.failures (the one decision every caller
relies on), and carried as that type from here on:
- transient (`AgentMailUnavailable`): a 408, 409 (an identical send still in flight), 429, 5xx, a timeout or a
  connection failure. Retried in the call up to `AGENTMAIL_MAX_RETRIES` times with exponential backoff and
  jitter, waiting exactly `Retry-After` when the answer carries one (a longer `Retry-After` than
  `AGENTMAIL_RETRY_MAX_SECONDS` ends the retries at once); then raised, for the caller to retry later. Safe for
  sends only because every send carries an `Idempotency-Key`: a retry returns the original message.
- misconfigured (`AgentMailMisconfigured`): AgentMail refuses our own credentials (401, or a 403 about the key's
  permissions on our inbox). Reported in `DEPENDENCY_PROBLEMS` (the adapter is not ready) until a call succeeds.
- terminal (`AgentMailRefused`): AgentMail refuses this request and always will (400, 404, 422, any other 403).
403 `message_rejected` on a send is a `MessageRejected` value, not an exception: an outcome the case handles.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import quote

import httpx
import msgspec

from services.agentmail_adapter.payloads import (
    AttachmentDownload,
    ErrorResponse,
    Message,
    ReplyMessage,
    SendMessage,
    SentMessage,
)
from shared.failures import DEPENDENCY_PROBLEMS, DependencyFailure, Misconfigured, Terminal, Transient
from shared.retry_after import retry_after_seconds
from shared.settings import AgentMailSettings

log = logging.getLogger("caseflow.agentmail_adapter.client")

DEPENDENCY: Final = "agentmail"
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
# 403 codes that refuse our key on our own inbox (docs/reference/agentmail-api.md §3.2), not this request: an
# operator must fix AGENTMAIL_API_KEY, its permissions or the inbox's domain. A bare `forbidden` stays terminal.
_CREDENTIAL_403_CODES: Final = frozenset(
    {"missing_permission", "permission_escalation", "unrestricted_key_required", "domain_not_verified"}
)
REJECTED_CODE: Final = "message_rejected"


class AgentMailError(DependencyFailure):
    """AgentMail failed; the subclass is the failure class (transient, misconfigured, terminal)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(DEPENDENCY, f"{status or '-'} {code or ''}: {message}")
        self.status = status
        self.code = code
        self.message = message


class AgentMailUnavailable(AgentMailError, Transient):
    """Transient failures (408, 409, 429, 5xx, timeouts, connection errors) outlasted the in-call retries."""


class AgentMailMisconfigured(AgentMailError, Misconfigured):
    """AgentMail refuses our own credentials: 401, or a 403 on the key's permissions."""


class AgentMailRefused(AgentMailError, Terminal):
    """AgentMail refuses this request for good: 400, 404, 422, a 403 that is not about our key."""


class MessageRejected(msgspec.Struct, frozen=True):
    """AgentMail refused to send (403 `message_rejected`): a blocked or suppressed recipient."""

    reason: str


type SendResult = SentMessage | MessageRejected
type Sleep = Callable[[float], Awaitable[None]]


def path_segment(value: str) -> str:
    """Percent-encode an id for a URL path: message ids contain `<`, `>` and `@`."""
    return quote(value, safe="")


class AgentMailClient:
    def __init__(
        self,
        settings: AgentMailSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=settings.agentmail_base_url.rstrip("/") + "/v0",
            headers={"Authorization": f"Bearer {settings.agentmail_api_key}"},
            timeout=httpx.Timeout(settings.agentmail_timeout_seconds),
            transport=transport,
        )
        self._max_retries = settings.agentmail_max_retries
        self._base_delay = settings.agentmail_retry_base_seconds
        self._max_delay = settings.agentmail_retry_max_seconds
        # Injectable so tests can see the waits the policy chose without waiting on a clock.
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- messages -----------------------------------------------------------------------------------------

    async def send_message(self, inbox_id: str, message: SendMessage, *, idempotency_key: str) -> SendResult:
        """Start a new thread."""
        path = f"/inboxes/{path_segment(inbox_id)}/messages/send"
        return await self._send(path, message, idempotency_key)

    async def reply_to_message(
        self, inbox_id: str, message_id: str, reply: ReplyMessage, *, idempotency_key: str
    ) -> SendResult:
        """Answer `message_id` in its thread."""
        path = f"/inboxes/{path_segment(inbox_id)}/messages/{path_segment(message_id)}/reply"
        return await self._send(path, reply, idempotency_key)

    async def _send(self, path: str, body: msgspec.Struct, idempotency_key: str) -> SendResult:
        try:
            return await self._call("POST", path, SentMessage, body=body, headers={"Idempotency-Key": idempotency_key})
        except AgentMailRefused as error:
            if error.status == 403 and error.code == REJECTED_CODE:
                return MessageRejected(reason=error.message)
            raise

    async def get_message(self, inbox_id: str, message_id: str) -> Message:
        return await self._call(
            "GET", f"/inboxes/{path_segment(inbox_id)}/messages/{path_segment(message_id)}", Message
        )

    async def get_attachment(self, inbox_id: str, message_id: str, attachment_id: str) -> AttachmentDownload:
        path = (
            f"/inboxes/{path_segment(inbox_id)}/messages/{path_segment(message_id)}"
            f"/attachments/{path_segment(attachment_id)}"
        )
        return await self._call("GET", path, AttachmentDownload)

    # ---- threads ------------------------------------------------------------------------------------------

    # ---- transport ----------------------------------------------------------------------------------------

    async def _call[T](
        self,
        method: str,
        path: str,
        reply_type: type[T],
        *,
        body: msgspec.Struct | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        try:
            result = await self._attempts(method, path, reply_type, body=body, params=params, headers=headers)
        except AgentMailMisconfigured as exc:
            if DEPENDENCY_PROBLEMS.report(DEPENDENCY, exc.reason):
                # Once per change, not per call: every case waits on this, and one line says why.
                log.error(
                    "AgentMail refuses our credentials; cases wait until an operator fixes AGENTMAIL_API_KEY",
                    extra={"path": path, "status": exc.status, "code": exc.code},
                )
            raise
        except AgentMailRefused as exc:
            if exc.code != REJECTED_CODE:
                raise
            # A recipient rejection still proves our key works.
            self._succeeded()
            raise
        self._succeeded()
        return result

    @staticmethod
    def _succeeded() -> None:
        if DEPENDENCY_PROBLEMS.clear(DEPENDENCY):
            log.warning("AgentMail accepts our credentials again")

    async def _attempts[T](
        self,
        method: str,
        path: str,
        reply_type: type[T],
        *,
        body: msgspec.Struct | None,
        params: Mapping[str, str | int] | None,
        headers: Mapping[str, str] | None,
    ) -> T:
        content = msgspec.json.encode(body) if body is not None else None
        request_headers = {**(headers or {}), **({"Content-Type": "application/json"} if content else {})}
        for retry in range(self._max_retries + 1):
            last = retry == self._max_retries
            try:
                response = await self._http.request(
                    method, path, content=content, params=params, headers=request_headers
                )
            except httpx.TransportError as exc:
                if last:
                    raise AgentMailUnavailable(f"{type(exc).__name__} after {retry + 1} attempts") from exc
                await self._wait(retry, None, reason=type(exc).__name__, path=path)
                continue
            if response.is_success:
                try:
                    return msgspec.json.decode(response.content, type=reply_type)
                except msgspec.DecodeError as exc:
                    # A success we cannot read is AgentMail's fault and may be temporary (a half-deployed
                    # release); a send retried under its Idempotency-Key cannot email twice.
                    raise AgentMailUnavailable(f"unreadable response: {exc}", status=response.status_code) from exc
            error = _error_of(response)
            if response.status_code not in _RETRYABLE_STATUSES and response.status_code < 500:
                raise error
            retry_after = retry_after_seconds(response.headers)
            if last or (retry_after is not None and retry_after > self._max_delay):
                raise error
            await self._wait(retry, retry_after, reason=str(response.status_code), path=path)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _wait(self, retry: int, retry_after: float | None, *, reason: str, path: str) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            # Full jitter over an exponential ceiling keeps many replicas from retrying in lockstep.
            delay = random.uniform(0, min(self._max_delay, self._base_delay * 2**retry))  # noqa: S311
        log.warning(
            "AgentMail call failed; retrying",
            extra={"path": path, "reason": reason, "retry": retry + 1, "delay_seconds": round(delay, 3)},
        )
        await self._sleep(delay)


def _error_of(response: httpx.Response) -> AgentMailError:
    """The failure class of an error answer; branch on `code`, never `name` (its values are legacy)."""
    try:
        body = msgspec.json.decode(response.content, type=ErrorResponse)
    except msgspec.DecodeError:
        body = ErrorResponse()
    message = body.message or body.name or response.reason_phrase or "error"
    status = response.status_code
    if status in _RETRYABLE_STATUSES or status >= 500:
        return AgentMailUnavailable(message, status=status, code=body.code)
    if status == 401 or (status == 403 and body.code in _CREDENTIAL_403_CODES):
        return AgentMailMisconfigured(message, status=status, code=body.code)
    return AgentMailRefused(message, status=status, code=body.code)

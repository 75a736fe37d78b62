"""The simulator's HTTP surface: AgentMail's `/v0` subset, signed attachment downloads and the `/_sim` control API.

Handlers only translate HTTP to `Simulation` calls. AgentMail's conventions are kept where a client could
notice them: Bearer auth on `/v0`, 200 (not 201) for creates, `{name, code, message}` error bodies (validation
errors carry `errors[]`), message ids percent-decoded from the path, and `download_url`s that need no auth.
Each `/v0` handler names its operation in `opt`, which is what faults and the call log match on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.params import Parameter

from simulator.agentmail import wire
from simulator.agentmail.counterparties import Behaviour, Counterparty, signed_document
from simulator.agentmail.delivery import Delivery
from simulator.agentmail.faults import Call, FaultMiddleware, FaultSpec
from simulator.agentmail.mailbox import NewFile, StoredFile, iso
from simulator.agentmail.settings import SimulatorSettings
from simulator.agentmail.simulation import DeliveryKind, Inbound, Simulation

log = logging.getLogger("simulator.agentmail")

DOWNLOAD_TTL_SECONDS = 3600
# Who "signed" the sample PDF attached to injected mail that brings no content of its own.
SAMPLE_SIGNER = Counterparty(address="agree@sim.example", behaviour=Behaviour.AGREE, name="Jordan Lee")
IdempotencyKey = Annotated[str | None, Parameter(header="Idempotency-Key", required=False)]


# ---- control API bodies -----------------------------------------------------------------------------------


class InboundAttachment(msgspec.Struct, frozen=True, kw_only=True):
    filename: str
    content_type: str = "application/pdf"
    content: str | None = None  # base64; absent: the simulator's sample signed PDF


class InboundRequest(msgspec.Struct, frozen=True, kw_only=True):
    from_: str = msgspec.field(name="from")
    text: str
    inbox_id: str | None = None
    to: list[str] | None = None
    subject: str | None = None
    html: str | None = None
    in_reply_to: str | None = None
    thread_id: str | None = None
    attachments: list[InboundAttachment] = []
    headers: dict[str, str] | None = None
    body_in_webhook: bool = True


class Injected(msgspec.Struct, frozen=True):
    message: wire.Message
    event_id: str


class DeliveryEventRequest(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    kind: DeliveryKind
    reason: str | None = None


class Emitted(msgspec.Struct, frozen=True):
    event_id: str


class Outbox(msgspec.Struct, frozen=True):
    count: int
    messages: list[wire.Message]


class Armed(msgspec.Struct, frozen=True):
    faults: list[FaultSpec]


# ---- helpers ----------------------------------------------------------------------------------------------


def decode_body[T](raw: bytes, type_: type[T]) -> T:
    """Decode a JSON body the way AgentMail validates it: problems are 400 ValidationError."""
    try:
        return msgspec.json.decode(raw or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        raise wire.ApiError.validation(path.rstrip("`").lstrip("."), message) from None
    except msgspec.DecodeError:
        raise wire.ApiError.validation("", "The body is not valid JSON") from None


def _check_key(key: str | None) -> str | None:
    if key is not None and not key.strip():
        raise wire.ApiError.validation("Idempotency-Key", "Idempotency-Key must not be empty")
    return key


class FileLinks:
    """Signed, expiring, unauthenticated download links, like AgentMail's CDN URLs."""

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url.rstrip("/")
        self._key = os.urandom(32)

    def _signature(self, attachment_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{attachment_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def response(self, stored: StoredFile, request: Request[Any, Any, Any]) -> wire.AttachmentResponse:
        expires = int(time.time()) + DOWNLOAD_TTL_SECONDS
        base = self.public_url or str(request.base_url).rstrip("/")
        attachment = stored.attachment
        url = f"{base}/_files/{attachment.attachment_id}?expires={expires}&signature="
        return wire.AttachmentResponse(
            attachment_id=attachment.attachment_id,
            filename=attachment.filename,
            size=attachment.size,
            content_type=attachment.content_type,
            content_disposition=attachment.content_disposition,
            download_url=url + self._signature(attachment.attachment_id, expires),
            expires_at=iso(datetime.fromtimestamp(expires, UTC)),
        )

    def valid(self, attachment_id: str, expires: int, signature: str) -> bool:
        fresh = expires >= time.time()
        return fresh and hmac.compare_digest(signature, self._signature(attachment_id, expires))


# ---- the app ----------------------------------------------------------------------------------------------


def create_app(settings: SimulatorSettings) -> Litestar:
    simulation = Simulation(settings)
    links = FileLinks(settings.public_url)

    def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization")
        if not header:
            raise wire.ApiError(401, "UnauthorizedError", "missing_authorization", "Missing Authorization")
        scheme, _space, token = header.partition(" ")
        if scheme != "Bearer":
            raise wire.ApiError(401, "UnauthorizedError", "invalid_token_type", "Use 'Bearer <api key>'")
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise wire.ApiError(401, "UnauthorizedError", "unknown_api_key", "Unknown API key")

    # -- /v0 --

    @post("/inboxes", status_code=200, opt={"operation": "create_inbox"})
    async def create_inbox(request: Request[Any, Any, Any]) -> wire.Inbox:
        return simulation.mailbox.create_inbox(decode_body(await request.body(), wire.CreateInboxRequest))

    @get("/inboxes", opt={"operation": "list_inboxes"})
    async def list_inboxes(limit: int | None = None, page_token: str | None = None) -> wire.ListInboxesResponse:
        return simulation.mailbox.list_inboxes(limit=limit, page_token=page_token)

    @get("/inboxes/{inbox_id:str}", opt={"operation": "get_inbox"})
    async def get_inbox(inbox_id: str) -> wire.Inbox:
        return simulation.mailbox.inbox(inbox_id)

    @post("/inboxes/{inbox_id:str}/messages/send", status_code=200, opt={"operation": "send"})
    async def send(
        inbox_id: str, request: Request[Any, Any, Any], idempotency_key: IdempotencyKey = None
    ) -> wire.SendMessageResponse:
        body = decode_body(await request.body(), wire.SendMessageRequest)
        return simulation.send(inbox_id, body, idempotency_key=_check_key(idempotency_key))

    @post("/inboxes/{inbox_id:str}/messages/{message_id:str}/reply", status_code=200, opt={"operation": "reply"})
    async def reply(
        inbox_id: str, message_id: str, request: Request[Any, Any, Any], idempotency_key: IdempotencyKey = None
    ) -> wire.SendMessageResponse:
        body = decode_body(await request.body(), wire.ReplyToMessageRequest)
        return simulation.reply(inbox_id, message_id, body, idempotency_key=_check_key(idempotency_key))

    @get("/inboxes/{inbox_id:str}/messages/{message_id:str}", opt={"operation": "get_message"})
    async def get_message(inbox_id: str, message_id: str) -> wire.Message:
        return simulation.mailbox.message(inbox_id, message_id)

    @get(
        "/inboxes/{inbox_id:str}/messages/{message_id:str}/attachments/{attachment_id:str}",
        opt={"operation": "get_attachment"},
    )
    async def get_message_attachment(
        inbox_id: str, message_id: str, attachment_id: str, request: Request[Any, Any, Any]
    ) -> wire.AttachmentResponse:
        stored = simulation.mailbox.attachment(inbox_id, attachment_id, message_id=message_id)
        return links.response(stored, request)

    @get(
        "/inboxes/{inbox_id:str}/threads/{thread_id:str}/attachments/{attachment_id:str}",
        opt={"operation": "get_attachment"},
    )
    async def get_thread_attachment(
        inbox_id: str, thread_id: str, attachment_id: str, request: Request[Any, Any, Any]
    ) -> wire.AttachmentResponse:
        stored = simulation.mailbox.attachment(inbox_id, attachment_id, thread_id=thread_id)
        return links.response(stored, request)

    @get("/inboxes/{inbox_id:str}/threads/{thread_id:str}", opt={"operation": "get_thread"})
    async def get_thread(
        inbox_id: str, thread_id: str, limit: int | None = None, page_token: str | None = None
    ) -> wire.Thread:
        return simulation.mailbox.thread(inbox_id, thread_id, limit=limit, page_token=page_token)

    @get("/threads/{thread_id:str}", opt={"operation": "get_thread"})
    async def get_org_thread(thread_id: str, limit: int | None = None, page_token: str | None = None) -> wire.Thread:
        return simulation.mailbox.thread(None, thread_id, limit=limit, page_token=page_token)

    @post("/webhooks", status_code=200, opt={"operation": "create_webhook"})
    async def create_webhook(request: Request[Any, Any, Any]) -> wire.Webhook:
        return simulation.mailbox.create_webhook(decode_body(await request.body(), wire.CreateWebhookRequest))

    @get("/webhooks/{webhook_id:str}", opt={"operation": "get_webhook"})
    async def get_webhook(webhook_id: str) -> wire.Webhook:
        return simulation.mailbox.webhook(webhook_id)

    api = Router(
        "/v0",
        guards=[require_api_key],
        route_handlers=[
            create_inbox,
            list_inboxes,
            get_inbox,
            send,
            reply,
            get_message,
            get_message_attachment,
            get_thread_attachment,
            get_thread,
            get_org_thread,
            create_webhook,
            get_webhook,
        ],
    )

    # -- downloads --

    @get("/_files/{attachment_id:str}", media_type="application/octet-stream")
    async def download(attachment_id: str, expires: int, signature: str) -> Response[bytes]:
        stored = simulation.mailbox.files.get(attachment_id)
        if stored is None or not links.valid(attachment_id, expires, signature):
            raise wire.ApiError(403, "ForbiddenError", "forbidden", "The link is invalid or has expired")
        attachment = stored.attachment
        return Response(
            stored.content,
            media_type=attachment.content_type or "application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{attachment.filename}"'},
        )

    # -- /_sim control API --

    @get("/outbox")
    async def outbox(to: str | None = None) -> Outbox:
        sent = [simulation.mailbox.messages[message_id] for message_id in simulation.mailbox.outbox]
        if to is not None:
            wanted = to.lower()
            sent = [message for message in sent if any(wanted in address.lower() for address in message.to)]
        return Outbox(count=len(sent), messages=sent)

    @post("/inbound", status_code=200)
    async def inbound(request: Request[Any, Any, Any]) -> Injected:
        body = decode_body(await request.body(), InboundRequest)
        message, event_id = simulation.inject(
            Inbound(
                sender=body.from_,
                text=body.text,
                inbox_id=body.inbox_id,
                to=body.to,
                subject=body.subject,
                html=body.html,
                in_reply_to=body.in_reply_to,
                thread_id=body.thread_id,
                files=tuple(_inbound_file(index, a) for index, a in enumerate(body.attachments)),
                headers=body.headers,
                body_in_webhook=body.body_in_webhook,
            )
        )
        return Injected(message=message, event_id=event_id)

    @post("/delivery-events", status_code=200)
    async def delivery_event(request: Request[Any, Any, Any]) -> Emitted:
        body = decode_body(await request.body(), DeliveryEventRequest)
        return Emitted(simulation.emit_delivery_event(body.message_id, body.kind, reason=body.reason))

    @post("/reset", status_code=204)
    async def reset() -> None:
        await simulation.reset()

    @post("/faults", status_code=200)
    async def arm_fault(request: Request[Any, Any, Any]) -> Armed:
        simulation.faults.arm(decode_body(await request.body(), FaultSpec))
        return Armed([armed.spec for armed in simulation.faults.faults])

    @get("/faults")
    async def armed_faults() -> Armed:
        return Armed([armed.spec for armed in simulation.faults.faults])

    @delete("/faults", status_code=204)
    async def clear_faults() -> None:
        simulation.faults.faults.clear()

    @get("/calls")
    async def calls(operation: str | None = None) -> list[Call]:
        return [call for call in simulation.faults.calls if operation in (None, call.operation)]

    @get("/webhook-deliveries")
    async def deliveries(event_id: str | None = None) -> list[Delivery]:
        return [d for d in simulation.dispatcher.deliveries if event_id in (None, d.event_id)]

    @post("/webhook-deliveries/{event_id:str}/redeliver", status_code=200)
    async def redeliver(event_id: str) -> list[Delivery]:
        found = simulation.dispatcher.redeliver(event_id)
        if not found:
            raise wire.ApiError.not_found("Event")
        return found

    @get("/health")
    async def health() -> dict[str, Literal["ok"]]:
        return {"status": "ok"}

    control = Router(
        "/_sim",
        route_handlers=[
            outbox,
            inbound,
            delivery_event,
            reset,
            arm_fault,
            armed_faults,
            clear_faults,
            calls,
            deliveries,
            redeliver,
            health,
        ],
    )

    return Litestar(
        route_handlers=[api, download, control],
        middleware=[DefineMiddleware(FaultMiddleware, book=simulation.faults)],
        exception_handlers={
            wire.ApiError: _api_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        on_shutdown=[simulation.aclose],
        openapi_config=None,
        logging_config=None,
        debug=False,
    )


def _inbound_file(index: int, attachment: InboundAttachment) -> NewFile:
    if attachment.content is None:
        content = signed_document(SAMPLE_SIGNER)
    else:
        try:
            content = base64.b64decode(attachment.content, validate=True)
        except binascii.Error:
            raise wire.ApiError.validation(f"attachments.{index}.content", "content must be base64") from None
    return NewFile(attachment.filename, attachment.content_type, content)


def _error(status: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: wire.ApiError) -> Response[bytes]:
    return _error(exc.status, exc.body, exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    details = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        wire.FieldError(path=[str(item.get("key", ""))], message=str(item.get("message", "is invalid")))
        for item in details
        if isinstance(item, dict)
    ]
    body = wire.ValidationErrorBody(name="ValidationError", code="validation_error", errors=errors, message=exc.detail)
    return _error(400, body)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotFoundException):
        return _error(404, wire.ErrorBody(name="NotFoundError", code="not_found", message="Route not found"))
    return _error(exc.status_code, wire.ErrorBody(name="ApiError", code="error", message=exc.detail))


def _unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled simulator error", exc_info=exc)
    body = wire.ErrorBody(name="InternalServerError", code="internal_error", message="Internal error")
    return _error(500, body)

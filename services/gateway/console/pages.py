"""`/console`: server-rendered pages for people, over the same RPCs, auth and throttling as the JSON API.

Every handler is thin: check the session (the router's guard) and, for a form, its CSRF token; ask the case,
webhook or billing service exactly as the matching JSON route does; render a Jinja2 template (autoescaped, so
whatever a counterparty wrote is text). The design decision for live status: a page's changing part is one
fragment carrying a digest of the data it shows; htmx asks for it every CONSOLE_POLL_SECONDS with that digest,
and the gateway answers 204 (htmx leaves the page alone, so a half-typed answer survives) until the data changes,
then the new fragment.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, get_args
from urllib.parse import quote, urlencode, urlsplit

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import FormMultiDict
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap

from services.gateway.assets import STATIC_DIR, asset_response
from services.gateway.console.render import error_page, page_headers
from services.gateway.console.session import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    ConsoleSession,
    SessionSealer,
    console_cookie,
    expired_cookie,
    is_https,
    new_token,
    tokens_match,
)
from services.gateway.context import GatewayContext
from services.gateway.guards import RateLimited, authenticate, source_of
from shared.contracts import billing, webhook
from shared.contracts import case as contract
from shared.contracts.auth import KeyIdentity
from shared.errors import ErrorCode, ServiceError
from shared.logs import client_id_var
from shared.settings import GatewaySettings

log = logging.getLogger("caseflow.gateway")

PAGE_SIZE: Final = 25
STATUSES: Final[tuple[str, ...]] = get_args(contract.CaseStatus)
# The only files under /console/assets: name → (file, content type); nothing else in the package is reachable.
ASSETS: Final[dict[str, tuple[Path, str]]] = {
    "htmx.min.js": (STATIC_DIR / "htmx" / "htmx.min.js", "text/javascript; charset=utf-8"),
    "htmx-LICENSE": (STATIC_DIR / "htmx" / "LICENSE", "text/plain; charset=utf-8"),
    "console.css": (STATIC_DIR / "console" / "console.css", "text/css; charset=utf-8"),
}
CaseId = Annotated[str, PathParameter(max_length=128)]
ItemId = Annotated[str, PathParameter(max_length=256)]


class SignInRequired(Exception):
    """No valid session (or its API key no longer works): the person is sent to the sign-in page."""


@functools.cache
def _sealer(keys: tuple[str, ...], lifetime_seconds: int) -> SessionSealer:
    return SessionSealer(list(keys), lifetime_seconds=lifetime_seconds)


def sealer_for(settings: GatewaySettings) -> SessionSealer:
    return _sealer(tuple(settings.console_session_keys), settings.console_session_seconds)


def _gateway(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayContext:
    gateway: GatewayContext = connection.app.state.gateway
    return gateway


async def require_console_session(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The console's twin of guards.require_api_key: the key comes from the sealed session instead of a header."""
    if handler.opt.get("console_public"):
        return
    gateway = _gateway(connection)
    session = sealer_for(gateway.settings).open(connection.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired()
    try:
        identity = await authenticate(gateway, session.api_key, source=source_of(connection))
    except ServiceError as exc:
        if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
            raise SignInRequired() from exc
        raise
    client_id_var.set(identity.client_id)
    decision = gateway.throttle.take(caller=identity.key_id, route_class="default")
    connection.state.rate_limit = decision
    if not decision.allowed:
        raise RateLimited(decision)
    connection.state.caller = identity
    connection.state.console_session = session


def _caller(request: Request[Any, Any, Any]) -> KeyIdentity:
    caller = request.state.caller
    assert isinstance(caller, KeyIdentity)
    return caller


def _session(request: Request[Any, Any, Any]) -> ConsoleSession:
    session = request.state.console_session
    assert isinstance(session, ConsoleSession)
    return session


async def checked_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The posted form, once its CSRF token is the session's (else 403, before any service is asked)."""
    form = await request.form()
    if not tokens_match(form.get(CSRF_FIELD), _session(request).csrf):
        raise ServiceError(ErrorCode.FORBIDDEN, "This form did not come from your console session; reload the page.")
    return form


def _page(request: Request[Any, Any, Any], name: str, status_code: int = 200, **context: Any) -> Template:
    session = getattr(request.state, "console_session", None)
    return Template(
        template_name=name,
        context={
            "csrf": session.csrf if isinstance(session, ConsoleSession) else "",
            "signed_in": isinstance(session, ConsoleSession),
            "poll_seconds": _gateway(request).settings.console_poll_seconds,
            **context,
        },
        status_code=status_code,
        headers=page_headers(),
    )


def _digest(*parts: msgspec.Struct | None) -> str:
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:20]


def _case_url(case_id: str, suffix: str = "") -> str:
    return f"/console/cases/{quote(case_id, safe='')}{suffix}"


# --- sign-in and sign-out -----------------------------------------------------------------------------------


@get("/", sync_to_thread=False)
def console_home() -> Redirect:
    return Redirect("/console/cases", status_code=303, headers=page_headers())


def _sign_in_page(request: Request[Any, Any, Any], *, status_code: int = 200, problem: str = "") -> Template:
    token = new_token()
    page = _page(request, "sign_in.html", status_code, sign_in_token=token, problem=problem)
    page.cookies.append(
        console_cookie(SIGN_IN_COOKIE, token, secure=is_https(request, _gateway(request)), max_age=3600)
    )
    return page


@get("/sign-in", opt={"console_public": True}, sync_to_thread=False)
def sign_in_form(request: Request[Any, Any, Any]) -> Template:
    return _sign_in_page(request)


@post("/sign-in", opt={"console_public": True}, status_code=303)
async def sign_in(request: Request[Any, Any, Any]) -> Response[Any]:
    gateway = _gateway(request)
    form = await request.form()
    cookie_token = request.cookies.get(SIGN_IN_COOKIE) or ""
    if not cookie_token or not tokens_match(form.get(CSRF_FIELD), cookie_token):
        raise ServiceError(ErrorCode.FORBIDDEN, "This sign-in form has expired or did not come from the console.")
    api_key = str(form.get("api_key") or "").strip()
    try:
        await authenticate(gateway, api_key, source=source_of(request))
    except ServiceError as exc:
        if exc.code not in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
            raise
        return _sign_in_page(request, status_code=401, problem="That API key was not accepted.")
    secure = is_https(request, gateway)
    sealed = sealer_for(gateway.settings).seal(ConsoleSession(api_key=api_key, csrf=new_token()))
    return Redirect(
        "/console/cases",
        status_code=303,
        headers=page_headers(),
        cookies=[
            console_cookie(SESSION_COOKIE, sealed, secure=secure, max_age=gateway.settings.console_session_seconds),
            expired_cookie(SIGN_IN_COOKIE, secure=secure),
        ],
    )


@post("/sign-out", status_code=303)
async def sign_out(request: Request[Any, Any, Any]) -> Redirect:
    await checked_form(request)
    return Redirect(
        "/console/sign-in",
        status_code=303,
        headers=page_headers(),
        cookies=[expired_cookie(SESSION_COOKIE, secure=is_https(request, _gateway(request)))],
    )


# --- cases list -----------------------------------------------------------------------------------------------


class CaseFilters(msgspec.Struct, frozen=True):
    statuses: list[str]
    client_reference_id: str | None
    updated_since: str | None
    cursor: str | None

    def query(self, *, cursor: str | None = None) -> str:
        pairs: list[tuple[str, str]] = [("status", status) for status in self.statuses]
        if self.client_reference_id:
            pairs.append(("clientReferenceId", self.client_reference_id))
        if self.updated_since:
            pairs.append(("updatedSince", self.updated_since))
        if cursor:
            pairs.append(("cursor", cursor))
        return urlencode(pairs)

    def updated_after_ms(self) -> int | None:
        """`updatedSince` is a datetime-local value (no zone): the console reads and shows UTC."""
        if not self.updated_since:
            return None
        try:
            moment = datetime.fromisoformat(self.updated_since)
        except ValueError as exc:
            raise ServiceError(ErrorCode.INVALID_REQUEST, "updatedSince: is not a date and time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0, int(moment.timestamp() * 1000))


def _filters(
    status: list[str] | None, client_reference_id: str | None, updated_since: str | None, cursor: str | None
) -> CaseFilters:
    statuses = [value for value in (status or []) if value]
    unknown = [value for value in statuses if value not in STATUSES]
    if unknown:
        raise ServiceError(ErrorCode.INVALID_REQUEST, f"status: {unknown[0]!r} is not a case status")
    return CaseFilters(
        statuses=statuses,
        client_reference_id=client_reference_id or None,
        updated_since=updated_since or None,
        cursor=cursor or None,
    )


async def _case_page(request: Request[Any, Any, Any], filters: CaseFilters) -> contract.CasePage:
    return await _gateway(request).rpc(
        contract.LIST,
        contract.ListCases(
            client_id=_caller(request).client_id,
            statuses=filters.statuses,
            client_reference_id=filters.client_reference_id,
            updated_after=filters.updated_after_ms(),
            limit=PAGE_SIZE,
            cursor=filters.cursor,
        ),
        contract.CasePage,
    )


StatusQuery = Annotated[list[str] | None, QueryParameter(name="status")]
ReferenceQuery = Annotated[str | None, QueryParameter(name="clientReferenceId", max_length=256)]
SinceQuery = Annotated[str | None, QueryParameter(name="updatedSince", max_length=64)]
CursorQuery = Annotated[str | None, QueryParameter(max_length=512)]
VersionQuery = Annotated[str | None, QueryParameter(max_length=64)]


def _list_context(filters: CaseFilters, page: contract.CasePage) -> dict[str, Any]:
    return {
        "filters": filters,
        "statuses": STATUSES,
        "page": page,
        "version": _digest(page),
        "live_url": f"/console/live/cases?{filters.query(cursor=filters.cursor)}",
        "next_url": f"/console/cases?{filters.query(cursor=page.next_cursor)}" if page.next_cursor else None,
        "first_url": f"/console/cases?{filters.query()}" if filters.cursor else None,
    }


@get("/cases")
async def cases(
    request: Request[Any, Any, Any],
    status: StatusQuery = None,
    client_reference_id: ReferenceQuery = None,
    updated_since: SinceQuery = None,
    cursor: CursorQuery = None,
) -> Template:
    filters = _filters(status, client_reference_id, updated_since, cursor)
    return _page(request, "cases.html", **_list_context(filters, await _case_page(request, filters)))


@get("/live/cases")
async def cases_live(
    request: Request[Any, Any, Any],
    status: StatusQuery = None,
    client_reference_id: ReferenceQuery = None,
    updated_since: SinceQuery = None,
    cursor: CursorQuery = None,
    version: VersionQuery = None,
) -> Template | Response[bytes]:
    filters = _filters(status, client_reference_id, updated_since, cursor)
    context = _list_context(filters, await _case_page(request, filters))
    if context["version"] == version:
        return Response(b"", status_code=204, headers=page_headers())
    return _page(request, "cases_live.html", **context)


# --- one case ---------------------------------------------------------------------------------------------------


async def _case_context(request: Request[Any, Any, Any], case_id: str) -> dict[str, Any]:
    gateway, caller = _gateway(request), _caller(request)
    view = await gateway.rpc(
        contract.GET,
        contract.GetCase(client_id=caller.client_id, case_id=case_id, include_transcript=True),
        contract.CaseView,
    )
    deliveries = await gateway.rpc(
        webhook.LIST_DELIVERIES,
        webhook.ListDeliveries(client_id=caller.client_id, case_id=case_id),
        webhook.WebhookDeliveries,
    )
    version = _digest(view, deliveries)
    messages = view.conversation_messages if isinstance(view.conversation_messages, list) else []
    return {
        "case": view,
        "messages": messages,
        "attachments_by_message": _attachments_by_message(view),
        "deliveries": deliveries.items,
        "terminal": view.status in contract.TERMINAL_STATUSES,
        "case_url": _case_url(case_id),
        "version": version,
        "live_url": f"/console/live{_case_url(case_id).removeprefix('/console')}",
        "never": contract.NOTHING_SCHEDULED,
    }


def _attachments_by_message(view: contract.CaseView) -> dict[str, list[contract.AttachmentMeta]]:
    grouped: dict[str, list[contract.AttachmentMeta]] = {}
    for attachment in view.attachments:
        grouped.setdefault(attachment.message_id, []).append(attachment)
    return grouped


@get("/cases/{case_id:str}")
async def case_page(request: Request[Any, Any, Any], case_id: CaseId) -> Template:
    return _page(request, "case.html", **await _case_context(request, case_id))


@get("/live/cases/{case_id:str}")
async def case_live(
    request: Request[Any, Any, Any], case_id: CaseId, version: VersionQuery = None
) -> Template | Response[bytes]:
    context = await _case_context(request, case_id)
    if context["version"] == version:
        return Response(b"", status_code=204, headers=page_headers())
    return _page(request, "case_live.html", **context)


@post("/cases/{case_id:str}/input", status_code=303)
async def provide_input(request: Request[Any, Any, Any], case_id: CaseId) -> Redirect:
    form = await checked_form(request)
    answer = str(form.get("provided_context") or "").strip()
    if not answer:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "providedContext: is required")
    if len(answer) > 10_000:
        raise ServiceError(ErrorCode.INVALID_REQUEST, "providedContext: is longer than 10000 characters")
    await _gateway(request).rpc(
        contract.PROVIDE_INPUT,
        contract.ProvideInput(
            client_id=_caller(request).client_id,
            case_id=case_id,
            input_request_id=str(form.get("input_request_id") or ""),
            provided_context=answer,
        ),
        contract.InputAccepted,
    )
    return Redirect(_case_url(case_id), status_code=303, headers=page_headers())


@post("/cases/{case_id:str}/cancel", status_code=303)
async def cancel_case(request: Request[Any, Any, Any], case_id: CaseId) -> Redirect:
    await checked_form(request)
    await _gateway(request).rpc(
        contract.CANCEL,
        contract.CaseRef(client_id=_caller(request).client_id, case_id=case_id),
        contract.CaseView,
    )
    return Redirect(_case_url(case_id), status_code=303, headers=page_headers())


@post("/cases/{case_id:str}/webhook-deliveries/{event_id:str}/redeliver", status_code=303)
async def redeliver(request: Request[Any, Any, Any], case_id: CaseId, event_id: ItemId) -> Redirect:
    await checked_form(request)
    await _gateway(request).rpc(
        webhook.REDELIVER,
        webhook.Redeliver(client_id=_caller(request).client_id, case_id=case_id, event_id=event_id),
        webhook.WebhookDelivery,
    )
    return Redirect(_case_url(case_id), status_code=303, headers=page_headers())


@get("/cases/{case_id:str}/attachments/{attachment_id:str}", status_code=303)
async def attachment(request: Request[Any, Any, Any], case_id: CaseId, attachment_id: ItemId) -> Redirect:
    """A fresh download link on every click (links expire), and only ever an http(s) one."""
    download = await _gateway(request).rpc(
        contract.ATTACHMENT,
        contract.GetAttachment(client_id=_caller(request).client_id, case_id=case_id, attachment_id=attachment_id),
        contract.AttachmentDownload,
    )
    if urlsplit(download.download_url).scheme not in ("http", "https"):
        raise ServiceError(ErrorCode.ATTACHMENT_NOT_FOUND)
    return Redirect(download.download_url, status_code=303, headers=page_headers())


# --- usage and assets -----------------------------------------------------------------------------------------


@get("/usage")
async def usage(request: Request[Any, Any, Any]) -> Template:
    caller = _caller(request)
    month = await _gateway(request).rpc(
        billing.USAGE, billing.GetUsage(client_id=caller.client_id, plan=caller.plan), billing.Usage
    )
    return _page(request, "usage.html", usage=month, plan=caller.plan)


@get("/assets/{name:str}", opt={"console_public": True}, sync_to_thread=False)
def console_asset(name: Annotated[str, PathParameter(max_length=64)]) -> Response[bytes]:
    return asset_response(ASSETS, name)


# --- errors: the API's codes and messages, as a page ------------------------------------------------------------


def _exception_handlers() -> ExceptionHandlersMap:
    def service_error(request: Request[Any, Any, Any], exc: ServiceError) -> Response[Any]:
        return error_page(request, exc.code, exc.message)

    def rate_limited(request: Request[Any, Any, Any], exc: RateLimited) -> Response[Any]:
        return error_page(request, ErrorCode.RATE_LIMITED, headers=exc.decision.headers())

    def sign_in_required(request: Request[Any, Any, Any], _: SignInRequired) -> Response[Any]:
        secure = is_https(request, _gateway(request))
        if request.headers.get("hx-request"):
            # htmx follows redirects inside the fragment; this makes the whole window go to the sign-in page.
            return Response(
                b"",
                status_code=204,
                headers={**page_headers(), "HX-Redirect": "/console/sign-in"},
                cookies=[expired_cookie(SESSION_COOKIE, secure=secure)],
            )
        return Redirect(
            "/console/sign-in",
            status_code=303,
            headers=page_headers(),
            cookies=[expired_cookie(SESSION_COOKIE, secure=secure)],
        )

    def validation_error(request: Request[Any, Any, Any], _: ValidationException) -> Response[Any]:
        return error_page(request, ErrorCode.INVALID_REQUEST)

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.PAYLOAD_TOO_LARGE}
        return error_page(request, code.get(exc.status_code, ErrorCode.INVALID_REQUEST))

    def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.error("unhandled console exception", exc_info=exc, extra={"path": request.url.path})
        return error_page(request, ErrorCode.INTERNAL_ERROR)

    return {
        ServiceError: service_error,
        RateLimited: rate_limited,
        SignInRequired: sign_in_required,
        ValidationException: validation_error,
        HTTPException: http_error,
        Exception: unexpected,
    }


CONSOLE_ROUTER: Final = Router(
    "/console",
    route_handlers=[
        console_home,
        sign_in_form,
        sign_in,
        sign_out,
        cases,
        cases_live,
        case_page,
        case_live,
        provide_input,
        cancel_case,
        redeliver,
        attachment,
        usage,
        console_asset,
    ],
    guards=[require_console_session],
    exception_handlers=_exception_handlers(),
    include_in_schema=False,
)

"""The cases API (`/cases...`) and `/usage`: thin HTTP adapters over the case and billing services.

Each handler turns HTTP into one request to a service and the reply into the envelope; the services decide
everything else. The API-key guard runs first on every route here (see guards.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from services.gateway.bodies import strict_json_body
from services.gateway.context import GatewayContext
from services.gateway.envelope import DataEnvelope, ok
from services.gateway.guards import require_api_key
from services.gateway.openapi import AUTHENTICATED, error_responses
from shared.contracts import billing
from shared.contracts import case as contract
from shared.contracts.auth import KeyIdentity
from shared.errors import ErrorCode

CaseId = Annotated[str, PathParameter(description="The case id (a UUID) returned by POST /cases.", max_length=128)]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="Retry-safe creates: the same key and body within 24 h return the original case.",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7E]+$",
    ),
]
CASE_ERRORS = (*AUTHENTICATED, ErrorCode.CASE_NOT_FOUND)


def provide_caller(request: Request[Any, Any, Any]) -> KeyIdentity:
    caller = request.state.caller
    assert isinstance(caller, KeyIdentity)
    return caller


def read_context(request: Request[Any, Any, Any]) -> tuple[KeyIdentity, GatewayContext]:
    """The caller and the gateway, read straight from the request on the two read routes: Litestar's dependency
    injection (resolving `caller` and `gateway` per request) cost ~8 % of the gateway's CPU per `GET /cases/{id}`
    (bench/README.md, issue 16)."""
    gateway: GatewayContext = request.app.state.gateway
    return provide_caller(request), gateway


class CasesController(Controller):
    path = "/cases"
    tags = ["cases"]
    guards = [require_api_key]
    dependencies = {"caller": Provide(provide_caller, sync_to_thread=False)}
    security = [{"apiKey": []}]

    @post(
        "/",
        status_code=201,
        operation_id="createCase",
        summary="Create a case",
        description="Creates a case in CREATED and queues it; outreach happens asynchronously. All or nothing: "
        "a 5xx (or no answer) means no case will ever email anyone, unless a retry with the same Idempotency-Key "
        "returns it.",
        opt={"throttle": "create"},
        before_request=strict_json_body(contract.NewCase),
        responses=error_responses(
            *AUTHENTICATED,
            ErrorCode.IDEMPOTENCY_KEY_IN_USE,
            ErrorCode.IDEMPOTENCY_KEY_MISMATCH,
            ErrorCode.USAGE_LIMIT_REACHED,
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
    )
    async def create_case(
        self,
        data: JSONBody[contract.NewCase],
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[DataEnvelope[contract.CreatedCase]]:
        result = await gateway.create_case(
            contract.CreateCase(
                client_id=caller.client_id, plan=caller.plan, case=data, idempotency_key=idempotency_key
            )
        )
        headers = {"Location": f"/cases/{result.case_id}"}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(ok(contract.CreatedCase(case_id=result.case_id)), status_code=201, headers=headers)

    @get(
        "/",
        operation_id="listCases",
        summary="List your cases",
        description="Ordered by (updatedAt, caseId) ascending; follow nextCursor until it is null.",
        responses=error_responses(*AUTHENTICATED),
    )
    async def list_cases(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[list[contract.CaseStatus] | None, QueryParameter(name="status")] = None,
        client_reference_id: Annotated[str | None, QueryParameter(name="clientReferenceId", max_length=256)] = None,
        updated_after: Annotated[int | None, QueryParameter(name="updatedAfter", ge=0, le=2**53)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
    ) -> DataEnvelope[contract.CasePage]:
        caller, gateway = read_context(request)
        page = await gateway.rpc(
            contract.LIST,
            contract.ListCases(
                client_id=caller.client_id,
                statuses=list(status or []),
                client_reference_id=client_reference_id,
                updated_after=updated_after,
                limit=limit,
                cursor=cursor,
            ),
            contract.CasePage,
        )
        return ok(page)

    @get(
        "/{case_id:str}",
        operation_id="getCase",
        summary="Read a case",
        description="`includeTranscript=true` (only that literal) adds conversationThread and "
        "conversationMessages, served from Caseflow's own message store.",
        responses=error_responses(*CASE_ERRORS),
    )
    async def get_case(
        self,
        case_id: CaseId,
        request: Request[Any, Any, Any],
        include_transcript: Annotated[str | None, QueryParameter(name="includeTranscript")] = None,
    ) -> DataEnvelope[contract.CaseView]:
        caller, gateway = read_context(request)
        view = await gateway.rpc(
            contract.GET,
            contract.GetCase(
                client_id=caller.client_id, case_id=case_id, include_transcript=include_transcript == "true"
            ),
            contract.CaseView,
        )
        return ok(view)

    @post(
        "/{case_id:str}/input",
        status_code=202,
        operation_id="provideInput",
        summary="Answer a case waiting for input",
        description="202 means the answer is queued durably, not yet processed.",
        before_request=strict_json_body(contract.InputBody),
        responses=error_responses(
            *CASE_ERRORS,
            ErrorCode.CASE_NOT_WAITING_FOR_INPUT,
            ErrorCode.INPUT_REQUEST_NOT_PENDING,
            ErrorCode.INPUT_REQUEST_MISMATCH,
            ErrorCode.PAYLOAD_TOO_LARGE,
        ),
    )
    async def provide_input(
        self,
        case_id: CaseId,
        data: JSONBody[contract.InputBody],
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
    ) -> DataEnvelope[contract.InputAccepted]:
        accepted = await gateway.rpc(
            contract.PROVIDE_INPUT,
            contract.ProvideInput(
                client_id=caller.client_id,
                case_id=case_id,
                input_request_id=data.input_request_id,
                provided_context=data.provided_context,
            ),
            contract.InputAccepted,
        )
        return ok(accepted)

    @post(
        "/{case_id:str}/cancel",
        status_code=200,
        operation_id="cancelCase",
        summary="Cancel a case",
        description="Stops a non-terminal case: nothing further is sent and a case.cancelled webhook follows.",
        responses=error_responses(*CASE_ERRORS, ErrorCode.CASE_NOT_CANCELLABLE),
    )
    async def cancel_case(
        self,
        case_id: CaseId,
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
    ) -> DataEnvelope[contract.CaseView]:
        view = await gateway.rpc(
            contract.CANCEL, contract.CaseRef(client_id=caller.client_id, case_id=case_id), contract.CaseView
        )
        return ok(view)

    @get(
        "/{case_id:str}/attachments/{attachment_id:str}",
        operation_id="getAttachment",
        summary="Get a fresh download link for an attachment",
        responses=error_responses(*CASE_ERRORS, ErrorCode.ATTACHMENT_NOT_FOUND),
    )
    async def get_attachment(
        self,
        case_id: CaseId,
        attachment_id: Annotated[str, PathParameter(max_length=256)],
        caller: NamedDependency[KeyIdentity],
        gateway: NamedDependency[GatewayContext],
    ) -> DataEnvelope[contract.AttachmentDownload]:
        download = await gateway.rpc(
            contract.ATTACHMENT,
            contract.GetAttachment(client_id=caller.client_id, case_id=case_id, attachment_id=attachment_id),
            contract.AttachmentDownload,
        )
        return ok(download)


class UsageController(Controller):
    path = "/usage"
    tags = ["usage"]
    guards = [require_api_key]
    dependencies = {"caller": Provide(provide_caller, sync_to_thread=False)}
    security = [{"apiKey": []}]

    @get(
        "/",
        operation_id="getUsage",
        summary="This month's usage against your plan",
        responses=error_responses(*AUTHENTICATED),
    )
    async def get_usage(
        self, caller: NamedDependency[KeyIdentity], gateway: NamedDependency[GatewayContext]
    ) -> DataEnvelope[billing.Usage]:
        usage = await gateway.rpc(
            billing.USAGE, billing.GetUsage(client_id=caller.client_id, plan=caller.plan), billing.Usage
        )
        return ok(usage)

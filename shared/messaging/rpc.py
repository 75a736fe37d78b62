"""Request/reply between services: the one RPC client (`RpcClient`) over one typed `request`.

Design decision: every request has an explicit timeout, and carries its absolute deadline in a header
(`request_deadline_ms` reads it) so a service can drop work its asker has given up on. A timeout, a missing
responder or a lost connection becomes `ServiceError(SERVICE_UNAVAILABLE)`, which the gateway answers with 503 and
`Retry-After`; a service's `Err` reply is raised as the ServiceError it names.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import nats.errors
from faststream.nats import NatsBroker

from shared.clock import now_ms
from shared.contracts.rpc import Err, Ok
from shared.errors import ErrorCode, ServiceError
from shared.logs import request_id_var
from shared.messaging.connection import nats_client
from shared.subjects import DEADLINE_HEADER, REQUEST_ID_HEADER

log = logging.getLogger("caseflow.messaging")


@functools.cache
def _reply_decoder(reply_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(Ok[reply_type] | Err)


async def request[T](
    broker: NatsBroker,
    subject: str,
    payload: msgspec.Struct,
    reply_type: type[T],
    *,
    timeout: float,
    reply_grace_seconds: float = 0.0,
) -> T:
    """Ask a service and return its data; its Err replies are raised as ServiceError.

    The request carries its deadline (now + `timeout`, DEADLINE_HEADER). `reply_grace_seconds` waits that much
    longer than the deadline sent, so that work the service committed just before the deadline is answered."""
    client = nats_client(broker)
    if client is None or not client.is_connected:
        # While NATS is away, answer at once instead of waiting out the timeout in nats-py's reconnect buffer.
        log.warning("request while NATS is disconnected", extra={"subject": subject})
        raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE)
    headers = {DEADLINE_HEADER: str(now_ms() + int(timeout * 1000))}
    request_id = request_id_var.get()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    try:
        # nats-py's own request, not the broker's: FastStream would also run its middlewares on the request and
        # on the reply, work that bought nothing here (issue 16's profile of the gateway).
        message = await client.request(
            subject, msgspec.json.encode(payload), timeout=timeout + reply_grace_seconds, headers=headers
        )
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        log.warning("request got no answer", extra={"subject": subject, "error": type(exc).__name__})
        raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE) from exc
    try:
        reply = _reply_decoder(cast("Any", reply_type)).decode(message.data)
    except msgspec.DecodeError as exc:
        log.exception("undecodable reply", extra={"subject": subject})
        raise ServiceError(ErrorCode.INTERNAL_ERROR) from exc
    if isinstance(reply, Err):
        raise reply.to_exception()
    return cast("T", reply.data)


def request_deadline_ms(headers: Mapping[str, str]) -> int | None:
    """The absolute deadline (Unix ms) a request was sent with, or None when it carries none (or garbage)."""
    value = headers.get(DEADLINE_HEADER)
    return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True, slots=True)
class RpcClient:
    """A service's way of asking another: its broker and its configured deadline (RPC_TIMEOUT_SECONDS), bound once.

    Called like a function: `await rpc(subject, payload, ReplyType)`; `timeout` overrides the deadline for one
    request (a slow dependency), `reply_grace_seconds` as in `request`."""

    broker: NatsBroker
    timeout_seconds: float

    async def __call__[T](
        self,
        subject: str,
        payload: msgspec.Struct,
        reply_type: type[T],
        *,
        timeout: float | None = None,
        reply_grace_seconds: float = 0.0,
    ) -> T:
        return await request(
            self.broker,
            subject,
            payload,
            reply_type,
            timeout=timeout or self.timeout_seconds,
            reply_grace_seconds=reply_grace_seconds,
        )

"""Semantic checks of a new case, after msgspec has checked types, required fields, lengths and ranges.

Each failure is a 400 INVALID_REQUEST whose message starts with the field path, e.g.
`counterparty.address: must be an email address`. Checks use well-kept libraries: `email-validator` for
addresses, the IANA database (`zoneinfo` + `tzdata`) for time zones, `jsonschema` (draft 2020-12) for schemas.
"""

from __future__ import annotations

import functools
import ipaddress
import zoneinfo
from typing import Final
from urllib.parse import urlsplit

import msgspec
from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shared.contracts.case import NewCase
from shared.errors import ErrorCode, ServiceError

MAX_METADATA_BYTES: Final = 16 * 1024
# Free-form objects (knowledge, metadata, resultSchema) deeper than this are refused: no real document
# needs it, and deep nesting is a classic way to exhaust a parser or a prompt.
MAX_NESTING: Final = 32


def invalid(path: str, problem: str) -> ServiceError:
    return ServiceError(ErrorCode.INVALID_REQUEST, f"{path}: {problem}")


@functools.cache
def _iana_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _require_text(path: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise invalid(path, "must not be blank")


def validate_new_case(case: NewCase, *, allow_private_webhooks: bool) -> None:
    """Raise ServiceError(INVALID_REQUEST) naming the first offending field."""
    if case.channel != "EMAIL":
        raise invalid("channel", f'"{case.channel}" is not supported; only "EMAIL" is supported')
    _require_text("goal.objective", case.goal.objective)
    _require_text("counterparty.name", case.counterparty.name)
    _require_text("senderPersona.name", case.sender_persona.name)
    try:
        validate_email(case.counterparty.address, check_deliverability=False)
    except EmailNotValidError:
        raise invalid("counterparty.address", "must be an email address") from None
    timezone = case.counterparty.timezone
    if timezone is not None and timezone not in _iana_zones():
        raise invalid("counterparty.timezone", "must be an IANA time zone such as America/Los_Angeles")
    for index, constraint in enumerate(case.constraints or []):
        _require_text(f"constraints[{index}]", constraint)
    if case.result_schema is not None:
        try:
            Draft202012Validator.check_schema(case.result_schema)
        except SchemaError as exc:
            where = ".".join(str(part) for part in exc.absolute_path)
            path = f"resultSchema.{where}" if where else "resultSchema"
            raise invalid(path, f"is not a valid JSON Schema (draft 2020-12): {exc.message}") from None
    if case.client_webhook_url is not None:
        check_webhook_url(case.client_webhook_url, allow_private=allow_private_webhooks)
    for path, value in (
        ("goal.knowledge", case.goal.knowledge),
        ("metadata", case.metadata),
        ("resultSchema", case.result_schema),
    ):
        if nesting_depth(value) > MAX_NESTING:
            raise invalid(path, f"must not be nested more than {MAX_NESTING} levels deep")
    if case.metadata is not None and len(msgspec.json.encode(case.metadata)) > MAX_METADATA_BYTES:
        raise invalid("metadata", f"must be at most {MAX_METADATA_BYTES} bytes once serialized")


def nesting_depth(value: object) -> int:
    """How deeply objects and arrays nest inside `value` (iterative: deep input cannot exhaust the stack)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: list[object] = list(node.values())
        elif isinstance(node, list):
            children = list(node)
        else:
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """An absolute https URL (http only where private destinations are allowed, i.e. local deployments).

    A literal private, loopback, link-local or unspecified host is refused; DNS names are checked at delivery.
    """
    path = "clientWebhookUrl"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise invalid(path, "must be an absolute URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise invalid(path, "must be an absolute https URL")
    if parts.scheme == "http" and not allow_private:
        raise invalid(path, "must use https")
    if parts.username or parts.password:
        raise invalid(path, "must not contain credentials")
    if allow_private:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise invalid(path, "must not point to a private or loopback address")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if not address.is_global:
        raise invalid(path, "must not point to a private or loopback address")

"""Semantic checks of a new case, after msgspec has checked types, required fields, lengths and ranges.

Each failure is a 400 INVALID_REQUEST whose message starts with the field path, e.g.
`counterparty.address: must be an email address`. Checks use well-kept libraries: `email-validator` for
addresses, the IANA database (`zoneinfo` + `tzdata`) for time zones, `jsonschema` (draft 2020-12) for schemas.
A `resultSchema` is also checked for what would fail later in the worker: every `pattern` must compile on RE2
(the linear-time engine results are validated with, see `patterns`) and every `$ref` must point inside it.
"""

from __future__ import annotations

import functools
import ipaddress
import zoneinfo
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import msgspec
from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.case.patterns import PatternError, compile_pattern
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
        check_result_schema(case.result_schema)
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


# Keywords whose values are data, not schemas: a "$ref" or "pattern" inside them is not a keyword.
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "examples", "default"})
_REFERENCE_KEYWORDS: Final = ("$ref", "$dynamicRef")


def check_result_schema(schema: dict[str, Any]) -> None:
    """Refuse what `check_schema` lets through but the worker could not use: a pattern RE2 cannot compile, a
    `$ref` that is remote or does not resolve, a nested `$id` (it would change what `#/...` means), and
    `unevaluatedProperties` beside `patternProperties` (jsonschema evaluates that pair with backtracking `re`)."""
    keywords_seen: set[str] = set()
    pending: list[tuple[object, str]] = [(schema, "resultSchema")]
    while pending:
        node, path = pending.pop()
        if isinstance(node, list):
            pending.extend((item, f"{path}.{index}") for index, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        keywords_seen.update(key for key in node if isinstance(key, str))
        if isinstance(pattern := node.get("pattern"), str):
            _check_pattern(f"{path}.pattern", pattern)
        if isinstance(named := node.get("patternProperties"), dict):
            for key in named:
                _check_pattern(f"{path}.patternProperties.{key}", str(key))
        for keyword in _REFERENCE_KEYWORDS:
            if isinstance(reference := node.get(keyword), str) and not _resolves_locally(schema, reference):
                raise invalid(f"{path}.{keyword}", "must be a local reference (#/...) resolving within resultSchema")
        if path != "resultSchema" and isinstance(node.get("$id"), str):
            raise invalid(f"{path}.$id", "is not supported below the top of resultSchema")
        pending.extend((value, f"{path}.{key}") for key, value in node.items() if key not in _DATA_KEYWORDS)
    if {"unevaluatedProperties", "patternProperties"} <= keywords_seen:
        raise invalid("resultSchema", "must not combine unevaluatedProperties with patternProperties")


def _check_pattern(path: str, pattern: str) -> None:
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise invalid(path, f"is not supported by the linear-time regular expression engine (RE2): {exc}") from None


def _resolves_locally(root: object, reference: str) -> bool:
    """Whether `reference` is `#` or a JSON Pointer fragment `#/...` naming a value inside `root`."""
    if reference == "#":
        return True
    if not reference.startswith("#/"):
        return False
    target = root
    for token in reference[2:].split("/"):
        part = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return False
    return True


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

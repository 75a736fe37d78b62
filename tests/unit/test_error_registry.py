"""The error registry matches the public contract (docs/api.md, "Error codes") code for code."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from shared.contracts.rpc import Err, Ok
from shared.errors import ERROR_SPECS, ErrorCode, ServiceError, default_kind, http_status_of

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
_ROW = re.compile(r"^\| (\d{3}) \| ([A-Z_]+)(?: \([a-z ]+\))? \|", re.MULTILINE)


def contract_codes() -> dict[str, int]:
    """The "Error codes" table of docs/api.md, the contract: code → HTTP status."""
    section = API_MD.read_text().split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return {code: int(status) for status, code in _ROW.findall(section)}


CONTRACT = contract_codes()


def test_registry_has_exactly_the_contract_codes() -> None:
    assert len(CONTRACT) > 15  # the table was found and read
    assert {code.value for code in ErrorCode} == set(CONTRACT)
    assert set(ERROR_SPECS) == set(ErrorCode)


@pytest.mark.parametrize(("code", "status"), sorted(CONTRACT.items()))
def test_code_maps_to_contract_status(code: str, status: int) -> None:
    assert http_status_of(ErrorCode(code)) == status


def test_service_error_uses_default_message_unless_given() -> None:
    assert ServiceError(ErrorCode.CASE_NOT_FOUND).message == "Case not found."
    assert ServiceError(ErrorCode.CASE_NOT_FOUND, "gone").message == "gone"


def test_every_code_has_a_failure_kind_by_default_and_a_reply_carries_an_explicit_one() -> None:
    assert default_kind(ErrorCode.SERVICE_UNAVAILABLE) == "transient"
    assert default_kind(ErrorCode.RATE_LIMITED) == "transient"
    assert default_kind(ErrorCode.INVALID_REQUEST) == "terminal"
    assert default_kind(ErrorCode.CASE_NOT_FOUND) == "terminal"
    assert default_kind(ErrorCode.INTERNAL_ERROR) is None
    refused = ServiceError(ErrorCode.INTERNAL_ERROR, "AgentMail refused the request", kind="terminal")
    wire = msgspec.json.encode(Err.of(refused))
    decoded = msgspec.json.decode(wire, type=Ok[int] | Err)
    assert isinstance(decoded, Err)
    assert decoded.to_exception().kind == "terminal"
    # A reply from a service that does not send a kind gets the code's default.
    legacy = msgspec.json.decode(b'{"type":"err","code":"SERVICE_UNAVAILABLE","message":"x"}', type=Ok[int] | Err)
    assert isinstance(legacy, Err)
    assert legacy.to_exception().kind == "transient"

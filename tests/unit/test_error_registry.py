"""The error registry matches the public contract (docs/api.md, "Error codes") code for code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.errors import ERROR_SPECS, ErrorCode, ServiceError, http_status_of

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

"""JSON log lines: correlation fields from context, and secrets redacted whatever logged them."""

from __future__ import annotations

import json
import logging

from shared.logs import JsonFormatter, case_id_var, request_id_var


def line(formatter: JsonFormatter, message: str, **extra: object) -> dict[str, object]:
    record = logging.makeLogRecord({"msg": message, "levelname": "INFO", "name": "t", **extra})
    parsed: dict[str, object] = json.loads(formatter.format(record))
    return parsed


def test_context_fields_and_extras_are_fields() -> None:
    token_r, token_c = request_id_var.set("req-1"), case_id_var.set("case-9")
    try:
        entry = line(JsonFormatter("case"), "hello", attempt=2)
    finally:
        request_id_var.reset(token_r)
        case_id_var.reset(token_c)
    assert entry["service"] == "case"
    assert entry["msg"] == "hello"
    assert (entry["request_id"], entry["case_id"], entry["attempt"]) == ("req-1", "case-9", 2)


def test_configured_secrets_and_secret_shapes_are_redacted() -> None:
    formatter = JsonFormatter("auth", secrets=["am_dev_simulator_key", "short"])
    entry = line(
        formatter,
        "calling with am_dev_simulator_key and cf_live_abcdefghijklmnop and whsec_QUJDREVGR0hJSktM==",
        header="Bearer am_dev_simulator_key",
    )
    text = json.dumps(entry)
    for secret in ("am_dev_simulator_key", "cf_live_abcdefghijklmnop", "whsec_QUJDREVGR0hJSktM=="):
        assert secret not in text
    assert text.count("[redacted]") == 4

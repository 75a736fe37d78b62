"""Semantic validation of new cases: each failure names the field path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.case.validation import validate_new_case
from shared.contracts.case import NewCase
from shared.errors import ErrorCode, ServiceError


def body(**overrides: Any) -> NewCase:
    raw: dict[str, Any] = {
        "channel": "EMAIL",
        "goal": {"objective": "Collect a signed W-9"},
        "counterparty": {"address": "ap@northstar.example", "name": "Maya Chen", "timezone": "America/Los_Angeles"},
        "senderPersona": {"name": "Avery"},
    }
    raw.update(overrides)
    return msgspec.convert(raw, NewCase)


def rejection(case: NewCase, *, allow_private: bool = False) -> str:
    with pytest.raises(ServiceError) as caught:
        validate_new_case(case, allow_private_webhooks=allow_private)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value.message


def test_a_complete_case_passes() -> None:
    validate_new_case(
        body(
            resultSchema={"type": "object", "properties": {"signed": {"type": "boolean"}}, "required": ["signed"]},
            clientWebhookUrl="https://hooks.example.com/offload",
            metadata={"vendorId": "v1"},
            constraints=["Email only"],
        ),
        allow_private_webhooks=False,
    )


def test_sms_is_rejected_saying_only_email_is_supported() -> None:
    message = rejection(body(channel="SMS"))
    assert message.startswith("channel:")
    assert "only" in message
    assert "EMAIL" in message


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"counterparty": {"address": "not-an-email", "name": "M"}}, "counterparty.address"),
        (
            {"counterparty": {"address": "a@b.example", "name": "M", "timezone": "Mars/Olympus"}},
            "counterparty.timezone",
        ),
        ({"counterparty": {"address": "a@b.example", "name": "   "}}, "counterparty.name"),
        ({"goal": {"objective": "  "}}, "goal.objective"),
        ({"senderPersona": {"name": " "}}, "senderPersona.name"),
        ({"constraints": ["ok", "  "]}, "constraints[1]"),
        ({"resultSchema": {"type": "objekt"}}, "resultSchema.type"),
        ({"resultSchema": {"properties": {"x": {"type": 5}}}}, "resultSchema.properties.x.type"),
        ({"clientWebhookUrl": "ftp://hooks.example.com/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "http://hooks.example.com/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://127.0.0.1/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://[::1]/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://10.1.2.3/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://169.254.169.254/latest"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://localhost/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "https://user:pw@hooks.example.com/x"}, "clientWebhookUrl"),
        ({"clientWebhookUrl": "not a url"}, "clientWebhookUrl"),
        ({"metadata": {"blob": "x" * 17_000}}, "metadata"),
    ],
)
def test_each_problem_is_reported_with_its_field_path(overrides: dict[str, Any], path: str) -> None:
    assert rejection(body(**overrides)).startswith(f"{path}:")


def test_local_deployments_may_use_http_and_private_webhook_hosts() -> None:
    validate_new_case(body(clientWebhookUrl="http://127.0.0.1:9000/hook"), allow_private_webhooks=True)


def test_deeply_nested_free_form_json_is_refused() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    assert rejection(body(metadata=deep)).startswith("metadata:")
    assert rejection(body(goal={"objective": "o", "knowledge": deep})).startswith("goal.knowledge:")
    validate_new_case(body(metadata={"a": {"b": [1, {"c": 2}]}}), allow_private_webhooks=False)

"""The six services as real processes: readiness, recovery, correlated JSON logs, clean start-up failures."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from deploy.processes import ROOT, Stack


async def test_healthz_and_readyz_report_every_component(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"ok": True, "data": {"status": "up"}}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["data"] == {
        "status": "ready",
        "components": {
            "nats": "ok",
            "mongodb": "ok",
            "auth": "ok",
            "billing": "ok",
            "case": "ok",
            "agentmail_adapter": "ok",
            "webhook": "ok",
        },
    }


async def test_readyz_names_a_stopped_service_and_recovers_when_it_returns(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    billing = stack.services["billing"]
    assert billing.stop() == 0, billing.log_text()[-2000:]
    try:
        response = await api.get("/readyz")
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        assert "billing" in error["message"]
        assert error["details"]["components"]["billing"] == "down"
        assert error["details"]["components"]["case"] == "ok"
    finally:
        billing.start()
    stack.wait_ready(timeout=30)
    assert (await api.get("/readyz")).status_code == 200


async def test_every_service_logs_json_lines_with_the_gateway_request_id(stack: Stack, api: httpx.AsyncClient) -> None:
    request_id = f"trace-{time.time_ns()}"
    response = await api.get("/readyz", headers={"X-Request-Id": request_id})
    assert response.headers["x-request-id"] == request_id
    for name in ("auth", "billing", "case", "agentmail_adapter", "webhook"):
        lines = stack.services[name].json_log_lines()
        assert lines, f"{name} wrote no JSON log lines"
        assert all({"ts", "level", "service", "msg"} <= line.keys() for line in lines)
        assert any(line.get("request_id") == request_id and line["service"] == name for line in lines), name


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("gateway", "GATEWAY_PORT", "not-a-port"),
        ("auth", "KEY_HASH_SECRET", "short"),
        ("billing", "PLANS", "free=100"),
        ("case", "FOLLOW_UP_HOUR_SECONDS", "soon"),
        ("agentmail_adapter", "AGENTMAIL_BASE_URL", "ftp://mail"),
        ("webhook", "WEBHOOK_TIMEOUT_SECONDS", "-3"),
    ],
)
def test_a_bad_setting_stops_the_service_with_a_message_naming_the_variable(
    service: str, variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env={"PATH": "/usr/bin:/bin", variable: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr

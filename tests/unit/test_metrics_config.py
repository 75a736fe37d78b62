"""Where metrics are served: the exporter's setting, `make run`'s ports, and labels that stay bounded."""

from __future__ import annotations

import configparser
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from deploy import local_stack
from deploy.processes import ROOT, free_port
from shared import metrics
from shared.settings import SETTINGS_BY_SERVICE, CommonSettings, SettingsError, load_settings
from shared.subjects import Service


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Every interface, as the exporter binds.
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_metrics_are_off_by_default_and_the_port_is_validated() -> None:
    assert load_settings(CommonSettings, {}).metrics_port == 0
    assert load_settings(CommonSettings, {"METRICS_PORT": "9100"}).metrics_port == 9100
    for bad in ("-1", "65536", "ninety"):
        with pytest.raises(SettingsError) as refused:
            load_settings(CommonSettings, {"METRICS_PORT": bad})
        assert refused.value.variable == "METRICS_PORT"


def test_a_port_that_cannot_be_bound_stops_the_process_naming_the_setting(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert metrics.serve_metrics_or_exit(0, service="case", version="0.1.0") is None
    with pytest.raises(SystemExit) as stopped:
        metrics.serve_metrics_or_exit(busy_port, service="case", version="0.1.0")
    assert stopped.value.code == 2
    assert f"METRICS_PORT: cannot listen on {busy_port}" in capsys.readouterr().err


async def test_the_exporter_serves_the_registry_and_stops() -> None:
    server = metrics.serve_metrics_or_exit(free_port(), service="billing", version="0.1.0")
    assert server is not None
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    assert b'caseflow_service_info{service="billing",version="0.1.0"} 1.0' in answer
    await server.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass


@pytest.mark.parametrize(
    ("route", "method", "status", "labels"),
    [
        ("/cases/{case_id}", "GET", 200, {"route": "/cases/{case_id}", "method": "GET", "status": "200"}),
        (None, "GET", 404, {"route": "unmatched", "method": "GET", "status": "404"}),
        (None, "BREW", 405, {"route": "unmatched", "method": "OTHER", "status": "405"}),
        ("/cases", "POST", None, {"route": "/cases", "method": "POST", "status": "none"}),
    ],
)
def test_http_labels_are_route_templates_known_methods_and_statuses(
    route: str | None, method: str, status: int | None, labels: dict[str, str]
) -> None:
    before = REGISTRY.get_sample_value("caseflow_http_requests_total", labels) or 0.0
    metrics.observe_http_request(route=route, method=method, status=status, seconds=0.01)
    assert REGISTRY.get_sample_value("caseflow_http_requests_total", labels) == before + 1


def test_make_run_gives_every_service_its_own_metrics_port() -> None:
    env = local_stack.local_environment({})
    ports = {service: env[local_stack.metrics_port_variable(Service(service))] for service in SETTINGS_BY_SERVICE}
    assert len(set(ports.values())) == len(SETTINGS_BY_SERVICE)
    supervisord = configparser.RawConfigParser()
    supervisord.read(ROOT / "deploy" / "supervisord.conf")
    for service in SETTINGS_BY_SERVICE:
        program = supervisord[f"program:{service}"]
        assert program["command"].endswith(f"-m services.{service}")
        variable = local_stack.metrics_port_variable(Service(service))
        assert program["environment"] == f'METRICS_PORT="%(ENV_{variable})s"'
    # Overridable like the other local ports.
    assert local_stack.local_environment({"LOCAL_METRICS_PORT_CASE": "19104"})["LOCAL_METRICS_PORT_CASE"] == "19104"


def test_make_run_refuses_to_start_when_a_metrics_port_is_taken(
    busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_METRICS_PORT_CASE", str(busy_port))
    with pytest.raises(SystemExit) as refused:
        local_stack.run()
    assert f"LOCAL_METRICS_PORT_CASE={busy_port}" in str(refused.value.code)


class StopRefreshing(BaseException):
    """Ends refresh_forever after the recorded waits (it retries any Exception)."""


async def test_a_refresh_that_takes_long_waits_longer_so_it_keeps_to_its_share() -> None:
    durations = [0.001, 3.5, 0.2, 0.0]  # seconds each refresh takes on the fake clock
    now = [0.0]
    waits: list[float] = []

    async def refresh() -> None:
        now[0] += durations[len(waits)]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        if len(waits) == len(durations):
            raise StopRefreshing

    with pytest.raises(StopRefreshing):
        await metrics.refresh_forever(refresh, every_seconds=60.0, max_share=0.02, clock=lambda: now[0], sleep=sleep)
    # 3.5 s of counting is followed by 175 s of rest (2 %); a quick one waits the interval.
    assert waits == pytest.approx([60.0, 175.0, 60.0, 60.0])


async def test_a_failing_refresh_is_retried_at_the_interval() -> None:
    waits: list[float] = []

    async def refresh() -> None:
        raise ConnectionError("MongoDB away")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise StopRefreshing

    with pytest.raises(StopRefreshing):
        await metrics.refresh_forever(refresh, every_seconds=5.0, clock=lambda: 0.0, sleep=sleep)
    assert waits == [5.0, 5.0]

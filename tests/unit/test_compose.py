"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked against the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from deploy import nats_config
from shared.settings import SETTINGS_BY_SERVICE, deploy_required_variables, dev_nats_password
from simulator.agentmail.settings import PREFIX, SimulatorSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_every_service_is_defined_with_infrastructure(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {*SETTINGS_BY_SERVICE, "mongo", "nats"}


@pytest.mark.parametrize("service", sorted(SETTINGS_BY_SERVICE))
def test_service_runs_its_module_from_the_shared_image(compose: dict[str, Any], service: str) -> None:
    definition = compose["services"][service]
    assert definition["command"] == ["python", "-m", f"services.{service}"]
    assert definition["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / definition["build"]["dockerfile"]).is_file()
    assert (ROOT / "services" / service / "__main__.py").is_file()
    assert definition["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert definition["depends_on"]["nats"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", sorted(SETTINGS_BY_SERVICE))
def test_service_gets_every_setting_it_requires(compose: dict[str, Any], service: str) -> None:
    environment = compose["services"][service]["environment"]
    missing = [name for name in deploy_required_variables(SETTINGS_BY_SERVICE[service]) if not environment.get(name)]
    assert not missing, f"{service} lacks {missing}"
    assert environment["NATS_URL"] == "${NATS_URL:-nats://nats:4222}"
    assert "mongo:27017" in environment["MONGO_URL"]


def _default_of(value: str) -> str:
    """The default of a `${NAME:-default}` interpolation."""
    assert value.startswith("${"), value
    return value.split(":-", 1)[1].removesuffix("}")


@pytest.mark.parametrize("service", sorted(SETTINGS_BY_SERVICE))
def test_service_connects_to_nats_with_the_password_nats_server_has_for_it(
    compose: dict[str, Any], service: str
) -> None:
    password = compose["services"][service]["environment"]["NATS_PASSWORD"]
    variable = nats_config.password_variable(service)
    assert password == compose["services"]["nats"]["environment"][variable]
    assert _default_of(password) == dev_nats_password(service)


def test_nats_gets_every_password_its_generated_configuration_reads(compose: dict[str, Any]) -> None:
    assert set(nats_config.local_environment()) <= set(compose["services"]["nats"]["environment"])


def test_the_cluster_profile_adds_two_nodes_routed_to_the_first(compose: dict[str, Any]) -> None:
    nodes = {name: compose["services"][name] for name in ("nats", "nats-2", "nats-3")}
    assert nodes["nats-2"]["profiles"] == nodes["nats-3"]["profiles"] == ["cluster"]
    assert "profiles" not in nodes["nats"]
    assert {node["environment"]["NATS_SERVER_NAME"] for node in nodes.values()} == {"nats-1", "nats-2", "nats-3"}
    assert len({volume for node in nodes.values() for volume in node["volumes"] if volume.endswith(":/data")}) == 3
    for name in ("nats-2", "nats-3"):
        assert "/etc/nats/nats-cluster.conf" in nodes[name]["command"]
    cluster_conf = (ROOT / "deploy" / "nats-cluster.conf").read_text()
    assert "include ./nats.conf" in cluster_conf
    for name in nodes:
        assert f"nats://{name}:6222" in cluster_conf


def test_the_cluster_configuration_is_accepted_by_nats_server() -> None:
    environment = {**os.environ, **nats_config.local_environment(), "NATS_SERVER_NAME": "nats-1"}
    checked = subprocess.run(
        [str(BIN / "nats-server"), "-t", "-c", str(ROOT / "deploy" / "nats-cluster.conf")],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_mongo_is_a_health_checked_single_node_replica_set(compose: dict[str, Any]) -> None:
    mongo = compose["services"]["mongo"]
    assert "--replSet" in mongo["command"]
    assert "rs.initiate" in " ".join(mongo["healthcheck"]["test"])


def test_nats_runs_jetstream_with_a_health_check(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    assert "--jetstream" in nats["command"]
    assert "healthz" in " ".join(nats["healthcheck"]["test"])
    # Message scheduling (follow-up timers) needs the 2.12 line or newer.
    major, minor = (int(part) for part in nats["image"].split(":")[1].split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 12)


def test_gateway_listens_on_all_interfaces_and_is_published(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    assert any(str(port).endswith(":8000") for port in gateway["ports"])


def test_agentmail_simulator_runs_from_the_shared_image_and_agrees_with_the_adapter(compose: dict[str, Any]) -> None:
    simulator = compose["services"]["agentmail-simulator"]
    assert simulator["command"] == ["python", "-m", "simulator.agentmail"]
    assert simulator["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / "simulator" / "agentmail" / "__main__.py").is_file()
    environment = simulator["environment"]
    assert environment["AGENTMAIL_SIM_WEBHOOK_URL"] == "http://gateway:8000/webhooks/agentmail"
    assert environment["AGENTMAIL_SIM_HOST"] == "0.0.0.0"
    known = {PREFIX + field.name.upper() for field in msgspec.structs.fields(SimulatorSettings)}
    assert set(environment) <= known, set(environment) - known
    adapter = compose["services"]["agentmail_adapter"]["environment"]
    assert adapter["AGENTMAIL_BASE_URL"].endswith(f"//agentmail-simulator:{environment['AGENTMAIL_SIM_PORT']}}}")
    for setting in ("API_KEY", "INBOX_ID", "WEBHOOK_SECRET"):
        assert environment[f"AGENTMAIL_SIM_{setting}"] == adapter[f"AGENTMAIL_{setting}"]


@pytest.mark.parametrize("service", sorted(SETTINGS_BY_SERVICE))
def test_every_service_exports_metrics_on_9100(compose: dict[str, Any], service: str) -> None:
    assert compose["services"][service]["environment"]["METRICS_PORT"] == "9100"


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    config_mount = next(volume for volume in prometheus["volumes"] if volume.endswith(":ro"))
    source, target, _ = config_mount.split(":")
    assert source == "./deploy/prometheus.yml"
    assert f"--config.file={target}" in prometheus["command"]

    config = yaml.safe_load((ROOT / source).read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        # One job per service, discovering every replica of it through Docker's DNS.
        (discovery,) = job["dns_sd_configs"]
        assert discovery["type"] == "A"
        scraped[job["job_name"]] = (discovery["names"], discovery["port"])
    assert scraped == {
        service: ([service], int(compose["services"][service]["environment"]["METRICS_PORT"]))
        for service in SETTINGS_BY_SERVICE
    }

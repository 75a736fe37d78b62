"""`make run-cluster` (deploy/supervisord-cluster.conf + deploy/local_stack.py cluster), checked offline: three
NATS nodes routed to each other, three replicas of every stream, two replicas of every service, two gateways.
The same shape runs for real in tests/faults/test_cluster.py."""

from __future__ import annotations

import configparser
import re

import pytest

from deploy import local_stack
from shared.settings import SETTINGS_BY_SERVICE, load_settings
from shared.subjects import BACKEND_SERVICES

NODES = ("nats-1", "nats-2", "nats-3")


@pytest.fixture(scope="module")
def programs() -> dict[str, dict[str, str]]:
    conf = configparser.RawConfigParser()
    conf.read(local_stack.CLUSTER_CONF)
    return {section.removeprefix("program:"): dict(conf[section]) for section in conf if section.startswith("program:")}


def test_three_nats_nodes_each_with_its_port_store_and_routes_to_all(programs: dict[str, dict[str, str]]) -> None:
    env = local_stack.local_environment({}, cluster=True)
    seen_ports, seen_stores = set(), set()
    for node in NODES:
        command = programs[node]["command"]
        assert "--jetstream" in command
        assert f"--server_name {node}" in command
        assert "--config %(ENV_CASEFLOW_ROOT)s/deploy/nats.conf" in command  # authentication on
        port = re.search(r"--port %\(ENV_(\w+)\)s", command)
        store = re.search(r"--store_dir (\S+)", command)
        assert port is not None
        assert store is not None
        seen_ports.add(env[port.group(1)])
        seen_stores.add(store.group(1))
        for other in (1, 2, 3):
            assert f"%(ENV_LOCAL_NATS_ROUTE_PORT_{other})s" in command.split("--routes", 1)[1]
    assert len(seen_ports) == len(seen_stores) == 3


def test_two_replicas_of_every_backend_service_and_two_gateways_on_two_ports(
    programs: dict[str, dict[str, str]],
) -> None:
    for service in BACKEND_SERVICES:
        program = programs[str(service)]
        assert program["command"].endswith(f"-m services.{service}")
        assert program["numprocs"] == "2"
        assert "%(process_num)d" in program["process_name"]
    gateways = [programs["gateway-1"], programs["gateway-2"]]
    assert {g["environment"] for g in gateways} == {
        'GATEWAY_PORT="%(ENV_GATEWAY_PORT)s"',
        'GATEWAY_PORT="%(ENV_LOCAL_GATEWAY_PORT_2)s"',
    }
    env = local_stack.local_environment({}, cluster=True)
    assert env["GATEWAY_PORT"] != env["LOCAL_GATEWAY_PORT_2"]


def test_the_services_see_every_node_and_replicate_streams_three_times() -> None:
    env = local_stack.local_environment({}, cluster=True)
    assert env["CASEFLOW_DATA"].endswith("/cluster")
    for cls in SETTINGS_BY_SERVICE.values():
        settings = load_settings(cls, env)
        assert settings.stream_replicas == 3
        assert len(settings.nats_url.split(",")) == 3
    # `make run` stays a single node with single-replica streams.
    single = local_stack.local_environment({})
    assert "STREAM_REPLICAS" not in single
    assert "," not in single["NATS_URL"]

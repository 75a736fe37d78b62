"""deploy/k8s, offline: the kustomize overlays render (kubectl's built-in kustomize, no cluster), every manifest
validates against the Kubernetes schema (kubernetes-validate), and every setting each service reads is provided
by its ConfigMap or a Secret and parses as production settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy import k8s_manifests, nats_config
from shared.settings import SETTINGS_BY_SERVICE, env_var, load_settings
from shared.subjects import Service

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = [K8S / "base", K8S / "overlays" / "production"]


def render(directory: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "production")


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_base_is_generated_from_the_code() -> None:
    assert k8s_manifests.main(["--check"]) == 0


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda path: path.name)
def test_every_rendered_manifest_is_valid_against_the_kubernetes_schema(directory: Path) -> None:
    documents = render(directory)
    assert documents
    for document in documents:
        # strict: an unknown field (a typo) is an error too
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert document["metadata"].get("namespace") == "caseflow", document["metadata"]["name"]


def test_every_service_has_a_deployment_an_autoscaler_and_a_disruption_budget(production: list[dict[str, Any]]) -> None:
    for service in Service:
        name = k8s_manifests.k8s_name(service)
        deployment = find(production, "Deployment", name)
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        autoscaler = find(production, "HorizontalPodAutoscaler", name)
        assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 2 <= autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]
        budget = find(production, "PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{service}"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]


def environment_of(documents: list[dict[str, Any]], service: Service) -> tuple[dict[str, str], dict[str, Any]]:
    """(the values from the ConfigMaps the container loads, the variables it takes from Secrets)."""
    container = find(documents, "Deployment", k8s_manifests.k8s_name(service))["spec"]["template"]["spec"][
        "containers"
    ][0]
    config: dict[str, str] = {}
    for source in container["envFrom"]:
        config.update(find(documents, "ConfigMap", source["configMapRef"]["name"])["data"])
    secrets = {entry["name"]: entry["valueFrom"]["secretKeyRef"] for entry in container["env"]}
    return config, secrets


@pytest.mark.parametrize("service", list(Service), ids=str)
def test_every_setting_the_service_reads_is_provided_and_parses_in_production(
    production: list[dict[str, Any]], service: Service
) -> None:
    config, secrets = environment_of(production, service)
    cls = SETTINGS_BY_SERVICE[str(service)]
    read = {env_var(field) for field in cls.__struct_fields__}
    assert read == set(config) | set(secrets), f"missing {read - set(config) - set(secrets)}"
    assert not set(config) & set(secrets)
    # The ConfigMap's values, with stand-ins for the Secrets, are valid production settings.
    fernet_key = "QUJD" * 10 + "QUI="
    special = {
        "AGENTMAIL_WEBHOOK_SECRET": "whsec_" + "QUJD" * 16,
        "WEBHOOK_SECRET_KEYS": fernet_key,
        "CONSOLE_SESSION_KEYS": fernet_key,
    }
    stand_ins = {name: special.get(name, "s" * 40) for name in secrets}
    settings = load_settings(cls, {**config, **stand_ins})
    assert settings.caseflow_env == "production"
    assert settings.stream_replicas == 3
    assert config["NATS_USER"] == str(service)
    assert secrets["NATS_PASSWORD"] == {"name": "caseflow-nats-users", "key": str(service)}


def test_probes_ask_what_matters_for_each_service(production: list[dict[str, Any]]) -> None:
    for service in Service:
        config, _ = environment_of(production, service)
        container = find(production, "Deployment", k8s_manifests.k8s_name(service))["spec"]["template"]["spec"][
            "containers"
        ][0]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        if service is Service.GATEWAY:
            assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
            assert ports[live["port"]] == int(config["GATEWAY_PORT"])
        else:
            # The process's own endpoint (shared/health_http.py) on HEALTH_PORT, not a queue-group RPC.
            assert (live["path"], ready["path"]) == ("/livez", "/readyz")
            assert ports[live["port"]] == int(config["HEALTH_PORT"])
        assert ports["metrics"] == int(config["METRICS_PORT"])


def test_network_policies_expose_only_the_gateway_and_keep_nats_and_mongodb_to_the_services(
    production: list[dict[str, Any]],
) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in production if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}
    # A rule without `from` admits any source: only the gateway's HTTP port has one.
    open_rules = [(name, rule) for name, spec in policies.items() for rule in spec["ingress"] if "from" not in rule]
    assert open_rules == [("gateway-from-anywhere", {"ports": [{"port": "http", "protocol": "TCP"}]})]
    assert policies["gateway-from-anywhere"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "caseflow-gateway"
    }
    services = {"podSelector": {"matchLabels": k8s_manifests.CLIENT_LABEL}}
    nats_client_rule = policies["nats-from-services"]["ingress"][0]
    assert nats_client_rule == {"from": [services], "ports": [{"port": 4222}]}
    assert services in policies["mongodb-from-services"]["ingress"][0]["from"]
    # Every Caseflow pod carries the label those rules admit.
    for service in Service:
        deployment = find(production, "Deployment", k8s_manifests.k8s_name(service))
        assert k8s_manifests.CLIENT_LABEL.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_nats_comes_from_its_helm_chart_as_a_three_node_jetstream_cluster_with_our_users() -> None:
    values = yaml.safe_load((K8S / "nats" / "values.yaml").read_text())
    assert nats_config.main(["--check"]) == 0
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    users = {user["user"] for user in values["config"]["merge"]["authorization"]["users"]}
    assert users == {*(str(service) for service in Service), "admin"}  # no test user in production
    for variable, source in values["container"]["env"].items():
        assert source["valueFrom"]["secretKeyRef"]["name"] == "caseflow-nats-users", variable


def test_mongodb_is_a_three_member_replica_set_of_the_operator_whose_secret_the_services_read() -> None:
    replica_set = yaml.safe_load((K8S / "mongodb" / "replica-set.yaml").read_text())
    assert replica_set["kind"] == "MongoDBCommunity"
    assert replica_set["spec"]["members"] == 3
    (user,) = replica_set["spec"]["users"]
    assert k8s_manifests.SECRET_REFS["MONGO_URL"][0] == user["connectionStringSecretName"]
    assert (K8S / "mongodb" / "values.yaml").is_file()

"""Kubernetes manifests for Caseflow (deploy/k8s/base, a kustomize base), generated from the code.

    python -m deploy.k8s_manifests           write deploy/k8s/base/*.yaml
    python -m deploy.k8s_manifests --check   exit 1 if the committed files differ from what the code gives

Design decisions a reader must know:
- Generated, because the facts live in the code: every setting a service reads (shared/settings.py) is in its
  ConfigMap, or, for secrets, a `secretKeyRef`; a new setting therefore reaches Kubernetes by re-running this,
  and tests/unit/test_k8s.py fails until then. The production overlay (deploy/k8s/overlays/production) is
  hand-written kustomize on top: image, replicas, the values a real deployment must choose.
- NATS and MongoDB are not written here: NATS is the official Helm chart (deploy/k8s/nats/values.yaml, from
  deploy/nats_config.py), MongoDB a replica set of the MongoDB Community operator (deploy/k8s/mongodb/). The
  services read MONGO_URL from the Secret the operator generates for the `caseflow` user.
- Resources come from measured resident memory (README, Scaling out): each Python service sat at 55-71 MiB on
  the three-node test cluster during 200 creates and a node kill, so requests are 128 MiB with a 256 MiB limit
  (the case service, which holds transcripts and model answers, 192/384 MiB). CPU has requests (what the HPA
  scales on) and no limit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final, get_type_hints

import msgspec
import yaml

from deploy.generated import write_or_check
from shared.settings import SETTINGS_BY_SERVICE, CommonSettings, env_var, field_extra
from shared.subjects import Service

ROOT: Final = Path(__file__).resolve().parent.parent
BASE: Final = ROOT / "deploy" / "k8s" / "base"
NAMESPACE: Final = "caseflow"
IMAGE: Final = "caseflow:0.1.0"
HEALTH_PORT: Final = 8080
METRICS_PORT: Final = 9100
GATEWAY_PORT: Final = 8000
# Labels of the pods the NATS chart and the MongoDB operator create (for the NetworkPolicies).
NATS_POD_LABELS: Final = {"app.kubernetes.io/name": "nats"}
MONGODB_POD_LABELS: Final = {"app": "caseflow-mongodb-svc"}
# Every Caseflow pod carries this label; NATS and MongoDB admit only pods that do.
CLIENT_LABEL: Final = {"caseflow.io/component": "service"}

# Values that differ from the local defaults in a cluster (everything else is the setting's default).
CLUSTER_VALUES: Final[dict[str, str]] = {
    "CASEFLOW_ENV": "production",
    "NATS_URL": "nats://nats.caseflow.svc.cluster.local:4222",
    "STREAM_REPLICAS": "3",
    "METRICS_PORT": str(METRICS_PORT),
    "HEALTH_PORT": str(HEALTH_PORT),
    "GATEWAY_HOST": "0.0.0.0",
    "GATEWAY_PORT": str(GATEWAY_PORT),
    "AGENTMAIL_BASE_URL": "https://api.agentmail.to",
    "OPENAI_BASE_URL": "https://api.openai.com/v1",
}
# Settings read from Secrets: (secret name, key). NATS passwords: one key per service in caseflow-nats-users,
# the Secret the NATS chart's values read too. MONGO_URL: the operator's generated connection string.
SECRET_REFS: Final[dict[str, tuple[str, str]]] = {
    "MONGO_URL": ("caseflow-mongodb-caseflow-caseflow", "connectionString.standard"),
    "KEY_HASH_SECRET": ("caseflow-secrets", "KEY_HASH_SECRET"),
    "WEBHOOK_SECRET_KEYS": ("caseflow-secrets", "WEBHOOK_SECRET_KEYS"),
    "CONSOLE_SESSION_KEYS": ("caseflow-secrets", "CONSOLE_SESSION_KEYS"),
    "AGENTMAIL_API_KEY": ("caseflow-secrets", "AGENTMAIL_API_KEY"),
    "AGENTMAIL_WEBHOOK_SECRET": ("caseflow-secrets", "AGENTMAIL_WEBHOOK_SECRET"),
    "OPENAI_API_KEY": ("caseflow-secrets", "OPENAI_API_KEY"),
}
# Secrets a service may run without (an empty OPENAI_API_KEY is valid with AGENT_BACKEND=rules).
OPTIONAL_SECRETS: Final = frozenset({"OPENAI_API_KEY"})
MEMORY: Final[dict[Service, tuple[str, str]]] = {service: ("128Mi", "256Mi") for service in Service} | {
    Service.CASE: ("192Mi", "384Mi")
}
CPU_REQUEST: Final[dict[Service, str]] = {service: "100m" for service in Service} | {
    Service.GATEWAY: "250m",
    Service.CASE: "250m",
}
MAX_REPLICAS: Final[dict[Service, int]] = {service: 6 for service in Service} | {
    Service.GATEWAY: 10,
    Service.CASE: 10,
}


def k8s_name(service: Service) -> str:
    """Kubernetes names allow no underscore: agentmail_adapter → caseflow-agentmail-adapter."""
    return "caseflow-" + str(service).replace("_", "-")


def labels(service: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": k8s_name(service), "app.kubernetes.io/part-of": "caseflow", **CLIENT_LABEL}


def _value(settings: CommonSettings, field: msgspec.structs.FieldInfo) -> str:
    variable = env_var(field.name)
    if variable in CLUSTER_VALUES:
        return CLUSTER_VALUES[variable]
    value = getattr(settings, field.name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def service_settings(service: Service) -> tuple[dict[str, str], list[str]]:
    """(ConfigMap data, secret variables) of a service: every setting it reads, one or the other."""
    cls = SETTINGS_BY_SERVICE[str(service)]
    defaults = msgspec.convert({}, cls)
    hints = get_type_hints(cls, include_extras=True)
    config: dict[str, str] = {}
    secrets: list[str] = []
    for field in msgspec.structs.fields(cls):
        variable = env_var(field.name)
        if field_extra(hints[field.name]).get("secret") or variable in SECRET_REFS:
            secrets.append(variable)
        elif variable == "NATS_USER":
            config[variable] = str(service)
        else:
            config[variable] = _value(defaults, field)
    return config, secrets


def _secret_env(service: Service, variable: str) -> dict[str, Any]:
    if variable == "NATS_PASSWORD":
        name, key = "caseflow-nats-users", str(service)
    else:
        name, key = SECRET_REFS[variable]
    ref: dict[str, Any] = {"name": name, "key": key}
    if variable in OPTIONAL_SECRETS:
        ref["optional"] = True
    return {"name": variable, "valueFrom": {"secretKeyRef": ref}}


def _probes(service: Service) -> dict[str, Any]:
    if service is Service.GATEWAY:
        # /healthz: the process answers HTTP; /readyz: every service, NATS and MongoDB answer it.
        live, ready, port = "/healthz", "/readyz", "http"
    else:
        # The process's own health endpoint (shared/health_http.py): its loop answers / it is connected.
        live, ready, port = "/livez", "/readyz", "health"
    return {
        "startupProbe": {"httpGet": {"path": live, "port": port}, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {
            "httpGet": {"path": live, "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": ready, "port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
    }


def deployment(service: Service) -> dict[str, Any]:
    config, secrets = service_settings(service)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    ports.insert(
        0,
        {"name": "http", "containerPort": GATEWAY_PORT}
        if service is Service.GATEWAY
        else {"name": "health", "containerPort": HEALTH_PORT},
    )
    requested, limit = MEMORY[service]
    container = {
        "name": "service",
        "image": IMAGE,
        "command": ["python", "-m", f"services.{service}"],
        "ports": ports,
        "envFrom": [{"configMapRef": {"name": k8s_name(service)}}],
        "env": [_secret_env(service, variable) for variable in secrets],
        "resources": {
            "requests": {"cpu": CPU_REQUEST[service], "memory": requested},
            "limits": {"memory": limit},
        },
        **_probes(service),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    grace = int(float(config["SHUTDOWN_GRACE_SECONDS"])) + 15
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": k8s_name(service), "labels": labels(service)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": k8s_name(service)}},
            # A new pod must be ready (connected, subscribed) before an old one goes: rolling updates lose nothing.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(service)},
                "spec": {
                    # SIGTERM: in-flight messages finish within SHUTDOWN_GRACE_SECONDS, then the pod exits.
                    "terminationGracePeriodSeconds": grace,
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": k8s_name(service)}},
                        }
                    ],
                    "containers": [container],
                },
            },
        },
    }


def config_map(service: Service) -> dict[str, Any]:
    config, _ = service_settings(service)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": k8s_name(service), "labels": labels(service)},
        "data": config,
    }


def autoscaler(service: Service) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": k8s_name(service), "labels": labels(service)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": k8s_name(service)},
            "minReplicas": 2,
            "maxReplicas": MAX_REPLICAS[service],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def disruption_budget(service: Service) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": k8s_name(service), "labels": labels(service)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": k8s_name(service)}}},
    }


def gateway_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": k8s_name(Service.GATEWAY), "labels": labels(Service.GATEWAY)},
        "spec": {
            "selector": {"app.kubernetes.io/name": k8s_name(Service.GATEWAY)},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def network_policies() -> list[dict[str, Any]]:
    def policy(name: str, pods: dict[str, str], ingress: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name},
            "spec": {
                "podSelector": {"matchLabels": pods} if pods else {},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    services = {"podSelector": {"matchLabels": CLIENT_LABEL}}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    return [
        # Nothing in the namespace takes traffic unless a policy below lets it.
        policy("default-deny-ingress", {}, []),
        # The gateway is the only thing reachable from outside (any source, its HTTP port only).
        policy(
            "gateway-from-anywhere",
            {"app.kubernetes.io/name": k8s_name(Service.GATEWAY)},
            [{"ports": [{"port": "http", "protocol": "TCP"}]}],
        ),
        # Prometheus (namespace `monitoring`) scrapes every service's exporter.
        policy("metrics-from-monitoring", CLIENT_LABEL, [{"from": [monitoring], "ports": [{"port": METRICS_PORT}]}]),
        # Only Caseflow's services reach NATS; the NATS pods reach each other on the route port.
        policy(
            "nats-from-services",
            NATS_POD_LABELS,
            [
                {"from": [services], "ports": [{"port": 4222}]},
                {"from": [{"podSelector": {"matchLabels": NATS_POD_LABELS}}], "ports": [{"port": 6222}]},
                {"from": [monitoring], "ports": [{"port": 8222}]},
            ],
        ),
        # Only Caseflow's services reach MongoDB; the replica set's members reach each other.
        policy(
            "mongodb-from-services",
            MONGODB_POD_LABELS,
            [
                {
                    "from": [services, {"podSelector": {"matchLabels": MONGODB_POD_LABELS}}],
                    "ports": [{"port": 27017}],
                }
            ],
        ),
    ]


def base_files() -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for service in Service:
        name = str(service).replace("_", "-")
        documents = [config_map(service), deployment(service), autoscaler(service), disruption_budget(service)]
        if service is Service.GATEWAY:
            documents.append(gateway_service())
        files[f"{name}.yaml"] = documents
    files["network-policies.yaml"] = network_policies()
    files["kustomization.yaml"] = [
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": sorted(name for name in files if name != "kustomization.yaml"),
        }
    ]
    return files


HEADER: Final = (
    "# Generated by `python -m deploy.k8s_manifests` from the code; do not edit (tests/unit/test_k8s.py checks it).\n"
)


def render(documents: list[dict[str, Any]]) -> str:
    return HEADER + "---\n".join(yaml.safe_dump(document, sort_keys=False, width=120) for document in documents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args(argv)
    files = ((BASE / name, render(documents)) for name, documents in base_files().items())
    return write_or_check(files, check=args.check, root=ROOT, command="python -m deploy.k8s_manifests")


if __name__ == "__main__":
    sys.exit(main())

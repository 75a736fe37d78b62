"""NATS authentication and authorization: one user per service, the admin CLI and the tests, each allowed to
publish and subscribe only to its own subjects. Writes the nats-server configuration every stack uses.

    python -m deploy.nats_config            write deploy/nats.conf (make run, make run-cluster, the tests,
                                            docker-compose) and deploy/k8s/nats/values.yaml (the Helm chart)
    python -m deploy.nats_config --check    exit 1 if either differs from what the code gives

Design decisions a reader must know:
- The permissions are derived, not listed by hand: what a service receives and publishes comes from the channel
  table `make docs` documents (shared/channels.py: receivers, senders, durable consumers; a test keeps it true to
  every service's subscribers); what it *asks* (request/reply) is the one table written here, `REQUESTS`, from
  the contracts' subject constants. JetStream API rights are narrowed to the service's own streams and consumers.
- Passwords are never in the files: each user's password is an environment reference
  (`$CASEFLOW_NATS_PASSWORD_<USER>`) that nats-server resolves at start-up, and it refuses to start when one is
  missing. Locally they default to `dev_nats_password(user)`, which the clients derive too; production sets
  NATS_PASSWORD per service from a Secret (CASEFLOW_ENV=production refuses an unset one).
- Replies: every user subscribes to `_INBOX.>` for the replies to its own requests (nats-py's inbox prefix), and a
  service that answers requests may publish to `_INBOX.>` (its replies; `allow_responses` alone breaks when a
  node dies between a request and its reply).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from deploy.generated import write_or_check
from shared.channels import all_channels
from shared.contracts import agentmail, auth, billing, case, webhook
from shared.settings import dev_nats_password
from shared.subjects import (
    ADMIN_NATS_USER,
    AGENTMAIL_INGRESS_BODIES,
    BACKEND_SERVICES,
    CASE_COMMANDS,
    PARKED,
    POISON_COUNTS,
    TEST_NATS_USER,
    THROTTLE_BUCKETS,
    KeyValueBucket,
    ObjectBucket,
    Service,
    StreamSpec,
    health_subject,
    stream_of,
)

ROOT: Final = Path(__file__).resolve().parent.parent
LOCAL_CONFIG: Final = ROOT / "deploy" / "nats.conf"
HELM_VALUES: Final = ROOT / "deploy" / "k8s" / "nats" / "values.yaml"

# Replies to a process's own requests (nats-py's default inbox prefix).
INBOX: Final = "_INBOX.>"

# What each process asks over request/reply; everything else a user may do is derived from the code.
REQUESTS: Final[Mapping[str, tuple[str, ...]]] = {
    Service.GATEWAY: (
        auth.VERIFY_KEY,
        billing.USAGE,
        case.CREATE,
        case.GET,
        case.LIST,
        case.PROVIDE_INPUT,
        case.CANCEL,
        case.ATTACHMENT,
        webhook.LIST_DELIVERIES,
        webhook.REDELIVER,
        agentmail.INGEST_WEBHOOK,
        # /readyz asks every backend service.
        *(health_subject(service) for service in BACKEND_SERVICES),
    ),
    Service.AUTH: (),
    Service.BILLING: (),
    Service.CASE: (
        billing.RESERVE,
        billing.RELEASE,
        agentmail.SEND,
        agentmail.REPLY,
        agentmail.TRANSCRIPT,
        agentmail.ATTACHMENT_LINK,
    ),
    Service.AGENTMAIL_ADAPTER: (),
    Service.WEBHOOK: (auth.WEBHOOK_SECRET, case.CHECK_OWNER),
    # The admin CLI (services.auth.admin): tells gateways about key changes, asks billing for usage reports.
    ADMIN_NATS_USER: (auth.KEYS_CHANGED, billing.USAGE_REPORT),
}


# JetStream object store buckets each process reads or writes (shared/blobs.py): the gateway puts AgentMail
# bodies too large for one message, the adapter reads them.
OBJECT_BUCKETS: Final[Mapping[str, tuple[ObjectBucket, ...]]] = {
    Service.GATEWAY: (AGENTMAIL_INGRESS_BODIES,),
    Service.AGENTMAIL_ADAPTER: (AGENTMAIL_INGRESS_BODIES,),
}


def object_store_api(buckets: Iterable[ObjectBucket]) -> list[str]:
    """What nats-py's object store does with a bucket: create or look up its stream `OBJ_<bucket>`, publish
    chunks and metadata under `$O.<bucket>.`, read metadata, read chunks through an ordered consumer (with flow
    control), purge what it replaces or deletes."""
    buckets = list(buckets)
    # nats-py's ordered consumer looks the chunk subject's stream up by name (it lists names, reads nothing).
    allowed: list[str] = ["$JS.API.STREAM.NAMES"] if buckets else []
    for bucket in buckets:
        stream = f"OBJ_{bucket.name}"
        allowed += [f"$O.{bucket.name}.>"]
        allowed += [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE", "PURGE", "MSG.GET")]
        allowed += [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
        allowed += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>"]
        allowed += [f"$JS.API.CONSUMER.{verb}.{stream}.>" for verb in ("INFO", "DELETE")]
        allowed += [f"$JS.FC.{stream}.>", f"$JS.ACK.{stream}.>"]
    return allowed


# JetStream key-value buckets each process reads and writes: the gateways share the throttle's token buckets.
KV_BUCKETS: Final[Mapping[str, tuple[KeyValueBucket, ...]]] = {Service.GATEWAY: (THROTTLE_BUCKETS,)}


def key_value_api(buckets: Iterable[KeyValueBucket]) -> list[str]:
    """What nats-py's key-value store does with a bucket: create or look up its stream `KV_<bucket>`, put and
    compare-and-set under `$KV.<bucket>.`, and read a key (direct get, or a stream message get)."""
    allowed: list[str] = []
    for bucket in buckets:
        stream = f"KV_{bucket.name}"
        allowed += [f"$KV.{bucket.name}.>"]
        allowed += [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE", "MSG.GET")]
        allowed += [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
    return allowed


@dataclass(frozen=True, slots=True)
class NatsUser:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    @property
    def password_variable(self) -> str:
        return password_variable(self.name)


def password_variable(user: str) -> str:
    """The environment variable nats-server reads this user's password from."""
    return f"CASEFLOW_NATS_PASSWORD_{user.upper()}"


def jetstream_api(streams: Iterable[str], consumers: Iterable[tuple[str, str]]) -> list[str]:
    """The JetStream API subjects a service needs: declare its streams (info, create, update) and create,
    inspect, fetch from and acknowledge its own durable consumers."""
    allowed: list[str] = []
    for stream in sorted(set(streams)):
        allowed += [f"$JS.API.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]
    for stream, durable in sorted(set(consumers)):
        allowed += [
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    return allowed


# Streams whose messages a service reads by subject (a direct lookup, not a consumer): the case service's
# reconciler asks CASE_COMMANDS whether an unconfirmed create's created command was ever published.
STREAM_READS: Final[Mapping[str, tuple[StreamSpec, ...]]] = {Service.CASE: (CASE_COMMANDS,)}


def stream_reads_api(streams: Iterable[StreamSpec]) -> list[str]:
    allowed: list[str] = []
    for stream in streams:
        allowed += [f"$JS.API.STREAM.MSG.GET.{stream.name}", f"$JS.API.DIRECT.GET.{stream.name}"]
        allowed += [f"$JS.API.DIRECT.GET.{stream.name}.>"]
    return allowed


def service_user(service: Service) -> NatsUser:
    channels = all_channels()
    published = sorted({channel.subject for channel in channels if service in channel.senders})
    received = sorted(
        {channel.subject for channel in channels if service in channel.receivers and stream_of(channel.subject) is None}
    )
    consumers = [
        (stream.name, str(channel.consumer))
        for channel in channels
        if service in channel.receivers and channel.consumer is not None and (stream := stream_of(channel.subject))
    ]
    streams = {stream.name for subject in published if (stream := stream_of(subject)) is not None}
    streams |= {stream for stream, _ in consumers}
    if service in BACKEND_SERVICES:
        streams.add(PARKED.name)  # every ServiceRuntime declares PARKED (ensure_streams), where it parks failures
    # Replies go to the asker's inbox. `allow_responses` covers a reply through the server that delivered the
    # request; after a node dies the responder may answer through another node, which never saw the request and
    # refuses the reply (found by the cluster fault tests), so publishing to inboxes is allowed outright.
    responds = (INBOX,) if received else ()
    return NatsUser(
        name=str(service),
        publish=(
            *REQUESTS[service],
            *published,
            *jetstream_api(streams, consumers),
            *object_store_api(OBJECT_BUCKETS.get(service, ())),
            *key_value_api(KV_BUCKETS.get(service, ())),
            # Every consumer's poison failures are counted in one bucket its replicas share.
            *key_value_api((POISON_COUNTS,) if consumers else ()),
            *stream_reads_api(STREAM_READS.get(service, ())),
            *responds,
        ),
        subscribe=(*received, INBOX),
    )


def users(*, with_test_user: bool) -> list[NatsUser]:
    found = [service_user(service) for service in Service]
    found.append(NatsUser(ADMIN_NATS_USER, REQUESTS[ADMIN_NATS_USER], (INBOX,)))
    if with_test_user:
        # Tests drive and inspect every subject and stream; never in a production configuration.
        found.append(NatsUser(TEST_NATS_USER, (">",), (">",)))
    return found


def _conf_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def local_config() -> str:
    lines = [
        "# Generated by `python -m deploy.nats_config` from the code; do not edit (a test checks it is current).",
        "# nats-server settings shared by `make run`, `make run-cluster`, the tests and docker-compose; ports,",
        "# addresses, cluster routes and the JetStream store directory come from the command line.",
        "",
        "# A request body may be 1 MiB (MAX_BODY_BYTES); the internal messages that carry it, and the case views",
        "# built from it, are larger. 1 MB (the default) would turn a valid create into a publish error.",
        "max_payload: 8MB",
        "",
        "# One user per process kind, each allowed only its own subjects. Passwords come from the environment",
        "# (CASEFLOW_NATS_PASSWORD_<USER>); nats-server refuses to start when one is missing.",
        "authorization {",
        "  users = [",
    ]
    for user in users(with_test_user=True):
        lines += [
            f"    {{user: {user.name}, password: ${user.password_variable}, permissions: {{",
            f"      publish: {{allow: {_conf_list(user.publish)}}}",
            f"      subscribe: {{allow: {_conf_list(user.subscribe)}}}",
            "      allow_responses: true",
            "    }}",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def helm_values() -> str:
    """Values for the official NATS Helm chart (nats/nats): a three-node JetStream cluster with the same users;
    passwords come from the `caseflow-nats-users` Secret through the container's environment."""
    authorization = {
        "users": [
            {
                "user": user.name,
                # The chart writes `<< ... >>` unquoted into nats.conf: an environment reference.
                "password": f"<< ${user.password_variable} >>",
                "permissions": {
                    "publish": {"allow": list(user.publish)},
                    "subscribe": {"allow": list(user.subscribe)},
                    "allow_responses": True,
                },
            }
            for user in users(with_test_user=False)
        ]
    }
    values = {
        "config": {
            "cluster": {"enabled": True, "replicas": 3},
            "jetstream": {
                "enabled": True,
                "fileStore": {"enabled": True, "pvc": {"enabled": True, "size": "10Gi"}},
            },
            "merge": {"max_payload": "<< 8MB >>", "authorization": authorization},
        },
        "container": {
            "env": {
                user.password_variable: {
                    "valueFrom": {"secretKeyRef": {"name": "caseflow-nats-users", "key": user.name}}
                }
                for user in users(with_test_user=False)
            },
            "merge": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}},
        },
        "podTemplate": {"topologySpreadConstraints": {"kubernetes.io/hostname": {"maxSkew": 1}}},
        "natsBox": {"enabled": False},
    }
    header = (
        "# Generated by `python -m deploy.nats_config` from the code; do not edit (a test checks it is current).\n"
        "# helm repo add nats https://nats-io.github.io/k8s/helm/charts/\n"
        "# helm install nats nats/nats --version 1.3.x -n caseflow -f deploy/k8s/nats/values.yaml\n"
    )
    return header + str(yaml.safe_dump(values, sort_keys=False, width=120))


def local_environment() -> dict[str, str]:
    """Every user's development password, as nats-server reads them (make run, the tests). Names only: cheap,
    no broker is built."""
    names = [*(str(service) for service in Service), ADMIN_NATS_USER, TEST_NATS_USER]
    return {password_variable(name): dev_nats_password(name) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args(argv)
    files = ((LOCAL_CONFIG, local_config()), (HELM_VALUES, helm_values()))
    return write_or_check(files, check=args.check, root=ROOT, command="python -m deploy.nats_config")


if __name__ == "__main__":
    sys.exit(main())

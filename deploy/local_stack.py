"""`make run`: the whole stack on one machine with embedded defaults, supervised by supervisord.

    python -m deploy.local_stack          prepare .data/, check ports, then exec supervisord (foreground)
    python -m deploy.local_stack cluster  `make run-cluster`: the same with a three-node NATS cluster, three
                                          replicas of every stream, two replicas of every service and two
                                          gateways (deploy/supervisord-cluster.conf), data in .data/cluster/
    python -m deploy.local_stack announce wait until the gateway is ready, print how to use it and the
                                          development client's API key (created once, see DEV_CLIENT)

supervisord (deploy/supervisord.conf) starts NATS with JetStream, the embedded MongoDB (SQLite file), and
the services, restarts any that crash, and on Ctrl-C or SIGTERM stops them all. Data lives under `.data/`
and survives restarts. Settings come from the environment, as in production (`FOLLOW_UP_HOUR_SECONDS=1
make run`); only what the local stack itself decides (ports, URLs of the embedded servers) is set here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import httpx
import msgspec
from pymongo.errors import PyMongoError

from deploy import nats_config
from services.auth.accounts import Accounts, NewClient
from services.auth.secrets import SecretCipher
from services.auth.store import AuthStore
from shared.mongo import create_mongo_client
from shared.settings import AuthSettings, load_settings_or_exit
from shared.subjects import Service

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CASEFLOW_DATA", ROOT / ".data"))
# Local development only: the development client's key is kept here in plain text so that every start can
# print it (and `make demo` can use it). A real deployment issues keys with the admin CLI and never saves them.
DEV_CLIENT = DATA / "dev-client.json"
# Each service's Prometheus exporter (`GET /metrics`), set as LOCAL_METRICS_PORT_<SERVICE> for supervisord.
METRICS_PORTS: Final = {
    Service.AUTH: 9101,
    Service.BILLING: 9102,
    Service.CASE: 9103,
    Service.AGENTMAIL_ADAPTER: 9104,
    Service.WEBHOOK: 9105,
    Service.GATEWAY: 9106,
}


def metrics_port_variable(service: Service) -> str:
    return f"LOCAL_METRICS_PORT_{service.upper()}"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# `make run-cluster`: the other two NATS nodes' client ports, the three nodes' route ports, the second gateway.
CLUSTER_PORTS: Final = {
    "LOCAL_NATS_PORT_2": 4223,
    "LOCAL_NATS_PORT_3": 4224,
    "LOCAL_NATS_ROUTE_PORT_1": 6222,
    "LOCAL_NATS_ROUTE_PORT_2": 6223,
    "LOCAL_NATS_ROUTE_PORT_3": 6224,
    "LOCAL_GATEWAY_PORT_2": 8001,
}
CLUSTER_CONF: Final = ROOT / "deploy" / "supervisord-cluster.conf"
SINGLE_CONF: Final = ROOT / "deploy" / "supervisord.conf"


def local_environment(environ: dict[str, str], *, cluster: bool = False) -> dict[str, str]:
    env = dict(environ)
    data = DATA / "cluster" if cluster else DATA
    if cluster:
        for name, port in CLUSTER_PORTS.items():
            env.setdefault(name, str(port))
        env.setdefault("LOCAL_NATS_PORT", "4222")
        # Clients know every node from the start, so they reach whichever is up.
        env.setdefault(
            "NATS_URL",
            ",".join(
                f"nats://127.0.0.1:{env[name]}"
                for name in ("LOCAL_NATS_PORT", "LOCAL_NATS_PORT_2", "LOCAL_NATS_PORT_3")
            ),
        )
        env.setdefault("STREAM_REPLICAS", "3")
    env.setdefault("LOCAL_NATS_PORT", "4222")
    env.setdefault("LOCAL_MONGO_PORT", "27017")
    env.setdefault("GATEWAY_PORT", "8000")
    # The AgentMail simulator stands in for AgentMail; the adapter is pointed at it unless told otherwise.
    env.setdefault("AGENTMAIL_SIM_PORT", "8025")
    env.setdefault("AGENTMAIL_BASE_URL", f"http://127.0.0.1:{env['AGENTMAIL_SIM_PORT']}")
    env.setdefault("NATS_URL", f"nats://127.0.0.1:{env['LOCAL_NATS_PORT']}")
    env.setdefault("MONGO_URL", f"mongodb://127.0.0.1:{env['LOCAL_MONGO_PORT']}/?directConnection=true")
    # Local client endpoints are on this machine; production keeps the SSRF guard on.
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    for service, port in METRICS_PORTS.items():
        env.setdefault(metrics_port_variable(service), str(port))
    # nats-server's users (deploy/nats.conf) with their development passwords, which the services derive too.
    for variable, password in nats_config.local_environment().items():
        env.setdefault(variable, password)
    env["CASEFLOW_ROOT"] = str(ROOT)
    env["CASEFLOW_DATA"] = str(data)
    env["CASEFLOW_BIN"] = str(Path(sys.executable).parent)
    return env


def run(*, cluster: bool = False) -> None:
    env = local_environment(dict(os.environ), cluster=cluster)
    ports = ["LOCAL_NATS_PORT", "LOCAL_MONGO_PORT", "GATEWAY_PORT", "AGENTMAIL_SIM_PORT"]
    # The cluster's replicas run without metrics exporters (see supervisord-cluster.conf).
    ports += list(CLUSTER_PORTS) if cluster else [metrics_port_variable(service) for service in METRICS_PORTS]
    busy = [f"{name}={env[name]}" for name in ports if _port_in_use(int(env[name]))]
    command = "make run-cluster" if cluster else "make run"
    if busy:
        sys.exit(f"{command}: port already in use ({', '.join(busy)}); stop the other process or set another port.")
    data = Path(env["CASEFLOW_DATA"])
    for sub in ("nats-1", "nats-2", "nats-3") if cluster else ("nats",):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("mongo", "logs"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    supervisord = str(Path(sys.executable).parent / "supervisord")
    conf = str(CLUSTER_CONF if cluster else SINGLE_CONF)
    # Replace this process so signals from make or the terminal reach supervisord directly.
    os.execve(supervisord, [supervisord, "--nodaemon", "--configuration", conf], env)  # noqa: S606


def announce(timeout_seconds: float = 120.0) -> None:
    url = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"
    deadline = time.monotonic() + timeout_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                break
            last = response.json().get("error", {}).get("message", response.text)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    else:
        print(f"caseflow: the stack did not become ready in {timeout_seconds:.0f}s ({last})", flush=True)
        sys.exit(1)
    try:
        dev_client = ensure_dev_client(DEV_CLIENT)
        credentials = [
            f"  API key:  {dev_client.api_key}  (client local-dev, plan unlimited; header x-api-key)",
            f"  Webhook secret: {dev_client.webhook_secret}",
        ]
    except PyMongoError as exc:
        credentials = [f"  API key:  unavailable (could not create the development client: {type(exc).__name__})"]
    second_gateway = os.environ.get("LOCAL_GATEWAY_PORT_2")
    metrics_line = (
        "  Metrics:  "
        + ", ".join(
            f"{service} :{os.environ.get(metrics_port_variable(service), port)}"
            for service, port in METRICS_PORTS.items()
        )
        + " (GET /metrics)"
    )
    banner = [
        "",
        "  Caseflow is ready."
        if not second_gateway
        else "  Caseflow is ready (three NATS nodes, two replicas of each service).",
        f"  Gateway:  {url}" + (f" and http://127.0.0.1:{second_gateway}" if second_gateway else ""),
        f"  API docs: {url}/schema",
        # The cluster's replicas run without exporters (supervisord-cluster.conf).
        *([] if second_gateway else [metrics_line]),
        *credentials,
        f"  Data:     {DATA}",
        "  Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(banner), flush=True)


def ensure_dev_client(path: Path) -> NewClient:
    """The development client saved at `path`, created through the admin code on the first start.

    It is created again when the saved key no longer works (the database was wiped, KEY_HASH_SECRET changed,
    or someone revoked it), so the banner never prints a dead key.
    """
    saved = None
    if path.exists():
        try:
            saved = msgspec.json.decode(path.read_bytes(), type=NewClient)
        except msgspec.DecodeError:
            saved = None  # an unreadable file is replaced like a missing one
    current = asyncio.run(_usable_or_new_dev_client(saved))
    if current is not saved:
        draft = path.with_suffix(".tmp")
        draft.write_bytes(msgspec.json.format(msgspec.json.encode(current), indent=2) + b"\n")
        draft.chmod(0o600)
        draft.replace(path)
    return current


async def _usable_or_new_dev_client(saved: NewClient | None) -> NewClient:
    settings = load_settings_or_exit(AuthSettings, "make run")
    mongo = create_mongo_client(settings, app_name="caseflow-local-stack")
    try:
        accounts = Accounts(
            AuthStore(mongo[settings.mongo_db], cipher=SecretCipher(settings.webhook_secret_keys)),
            key_hash_secret=settings.key_hash_secret,
        )
        if saved is not None and await accounts.is_usable_key(saved.api_key):
            return saved
        return await accounts.create_client(name="local-dev", plan="unlimited")
    finally:
        await mongo.close()


def status() -> None:
    """`make status`: what supervisord says about each process of a running `make run` (or `make run-cluster`,
    when its socket is there)."""
    cluster = (DATA / "cluster" / "supervisor.sock").exists()
    env = local_environment(dict(os.environ), cluster=cluster)
    supervisorctl = str(Path(sys.executable).parent / "supervisorctl")
    conf = str(CLUSTER_CONF if cluster else SINGLE_CONF)
    # supervisorctl exits non-zero when a program is not RUNNING (e.g. the one-shot `announce`): report, not fail.
    result = subprocess.run([supervisorctl, "--configuration", conf, "status"], env=env, check=False)
    if result.returncode not in (0, 3):
        sys.exit(result.returncode)


if __name__ == "__main__":
    if sys.argv[1:] == ["announce"]:
        announce()
    elif sys.argv[1:] == ["status"]:
        status()
    elif sys.argv[1:] == ["cluster"]:
        run(cluster=True)
    elif sys.argv[1:]:
        sys.exit(f"usage: python -m deploy.local_stack [cluster|announce|status]; got {' '.join(sys.argv[1:])}")
    else:
        run()

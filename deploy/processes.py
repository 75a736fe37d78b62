"""Real processes on free loopback ports: nats-server, embedded MongoDB, the simulator and our services.

Nothing here is a mock: each piece is the same executable `make run` starts, launched as a child process
with its output captured to a log file (tests read those files, e.g. to check request ids or secrets).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from deploy import nats_config
from shared.settings import dev_nats_password
from shared.subjects import TEST_NATS_USER

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (and `bind(0)`); Linux's default where it cannot be read."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _listen_port_candidates() -> Iterator[int]:
    """Every port below (or else above) the ephemeral range once, in order from a random start."""
    low, high = ephemeral_port_range()
    first, last = (max(1024, low - 16384), low - 1) if low > 2048 else (high + 1, 65535)
    # Not `random`: a test that seeds it would make every process start from the same port.
    start = first + secrets.randbelow(last - first + 1)
    yield from range(start, last + 1)
    yield from range(first, start)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a child process to bind.

    Not `bind(0)`: the kernel picks that port from its ephemeral range, which is where every outgoing connection's
    local port comes from too, so between our release and the child's bind a client socket can take it (CI saw a
    service exit with "Address already in use" this way). Ports outside that range are only ever taken by
    listeners, and each is handed out once per process.
    """
    for port in _listen_port_candidates():
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


def wait_for_port(port: int, *, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class ManagedProcess:
    """One child process with its output in `log_path`; start, stop (graceful), kill, restart."""

    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        return self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> int:
        return self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def json_log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines


class NatsServer(ManagedProcess):
    """nats-server with deploy/nats.conf: authentication and per-service permissions on, every user's password
    its development one. `url` logs in as the tests' own user (every subject); services are given `server_url`
    and connect as themselves."""

    def __init__(
        self,
        *,
        log_dir: Path,
        store_dir: Path,
        port: int | None = None,
        name: str = "nats",
        cluster: ClusterRoutes | None = None,
    ) -> None:
        self.port = port or free_port()
        store_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(BIN / "nats-server"),
            "--config",
            str(ROOT / "deploy" / "nats.conf"),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(store_dir),
        ]
        if cluster is not None:
            argv += cluster.arguments(name)
        super().__init__(name, argv, env={**os.environ, **nats_config.local_environment()}, log_dir=log_dir)

    @property
    def server_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        password = dev_nats_password(TEST_NATS_USER)
        return f"nats://{TEST_NATS_USER}:{password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        assert self.process is not None
        wait_for_port(self.port, process=self.process)


@dataclass(frozen=True)
class ClusterRoutes:
    """The route ports of a loopback NATS cluster: node `name` listens on its own and routes to all."""

    route_ports: Mapping[str, int]
    cluster_name: str = "caseflow"

    def arguments(self, name: str) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.route_ports.values())
        return [
            "--server_name",
            name,
            "--cluster_name",
            self.cluster_name,
            "--cluster",
            f"nats://127.0.0.1:{self.route_ports[name]}",
            "--routes",
            routes,
        ]


@contextlib.contextmanager
def private_nats_server(work_dir: Path) -> Iterator[NatsServer]:
    """A NATS server of one's own, for tests that answer subjects which the session's e2e stack answers too."""
    server = NatsServer(log_dir=work_dir, store_dir=work_dir / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class EmbeddedMongo(ManagedProcess):
    def __init__(self, *, log_dir: Path, sqlite_path: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "deploy.embedded_mongo", "--port", str(self.port)]
        if sqlite_path is not None:
            argv += ["--sqlite", str(sqlite_path)]
        super().__init__("mongodb", argv, env=os.environ, log_dir=log_dir)

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        super().start()
        assert self.process is not None
        wait_for_port(self.port, process=self.process)


class Simulator(ManagedProcess):
    """The AgentMail simulator (`python -m simulator.agentmail`) on a free port; state lives in its memory."""

    def __init__(
        self,
        *,
        log_dir: Path,
        webhook_url: str = "",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        name: str = "agentmail_simulator",
    ) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "simulator.agentmail"]
        settings = {
            "AGENTMAIL_SIM_HOST": "127.0.0.1",
            "AGENTMAIL_SIM_PORT": str(self.port),
            "AGENTMAIL_SIM_WEBHOOK_URL": webhook_url,
        }
        super().__init__(name, argv, env={**os.environ, **(env or {}), **settings}, log_dir=log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        assert self.process is not None
        wait_for_port(self.port, process=self.process)


SERVICE_MODULES: dict[str, str] = {
    "auth": "services.auth",
    "billing": "services.billing",
    "case": "services.case",
    "agentmail_adapter": "services.agentmail_adapter",
    "webhook": "services.webhook",
    "gateway": "services.gateway",
}


class Stack:
    """NATS, MongoDB, the AgentMail simulator and the six services as real processes, wired together through
    the environment: the adapter talks to the simulator, whose webhooks go to the stack's gateway."""

    def __init__(
        self,
        *,
        log_dir: Path,
        nats: NatsServer,
        mongo_url: str,
        env: Mapping[str, str],
        nats_url: str | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.nats = nats
        self.gateway_port = free_port()
        self.simulator_port = free_port()
        self.env = {
            **os.environ,
            # Each service connects as its own NATS user (its name, its development password).
            "NATS_URL": nats_url or nats.server_url,
            "MONGO_URL": mongo_url,
            "GATEWAY_PORT": str(self.gateway_port),
            "AGENTMAIL_BASE_URL": f"http://127.0.0.1:{self.simulator_port}",
            # Scripted counterparties answer quickly in tests (override through `env`).
            "AGENTMAIL_SIM_REPLY_DELAY_SECONDS": "0.2",
            "AGENTMAIL_SIM_EVENT_DELAY_SECONDS": "0.05",
            **env,
        }
        self.simulator = Simulator(
            log_dir=log_dir,
            webhook_url=f"{self.gateway_url}/webhooks/agentmail",
            env=self.env,
            port=self.simulator_port,
        )
        # Each service's Prometheus exporter, on a port of its own (not in `env`: extra processes started from
        # it, such as second replicas, keep metrics off instead of fighting over a port).
        self.metrics_ports = {name: free_port() for name in SERVICE_MODULES}
        self.services = {
            name: ManagedProcess(
                name,
                [sys.executable, "-m", module],
                env={**self.env, "METRICS_PORT": str(self.metrics_ports[name])},
                log_dir=log_dir,
            )
            for name, module in SERVICE_MODULES.items()
        }

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"

    def admin(self, *args: str) -> dict[str, Any]:
        """Run `python -m services.auth.admin ...` against the stack; returns its JSON output."""
        result = subprocess.run(
            [sys.executable, "-m", "services.auth.admin", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"admin {args} failed: {result.stderr}")
        output: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
        return output

    def start(self) -> None:
        self.simulator.start()
        for service in self.services.values():
            service.start()
        self.wait_ready()

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        self.simulator.stop()

    def wait_ready(self, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for service in [self.simulator, *self.services.values()]:
                if service.process is not None and service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited ({service.process.returncode}):\n{service.log_text()}")
            try:
                response = httpx.get(f"{self.gateway_url}/readyz", timeout=5.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"stack not ready after {timeout}s: {last}")

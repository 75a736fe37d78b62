"""The processes a bench run measures: Caseflow's stack (its own, or a running one at BENCH_URL) and the
baselines' servers (a bare Litestar app, a NATS echo responder).

Key design decision: the stack is started with `deploy.processes` (the same launcher the e2e tests
use: real nats-server, embedded MongoDB, simulator and six services on free ports, in a temporary directory),
configured for load: the bench client is on the `unlimited` plan and the rate limits are raised out of the way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.config import BenchConfig
from deploy.processes import EmbeddedMongo, ManagedProcess, NatsServer, Stack, free_port, wait_for_port

BENCH_DB = "caseflow_bench"
STACK_ENV = {
    "MONGO_DB": BENCH_DB,
    "LOG_LEVEL": "INFO",
    "RATE_LIMIT_CREATE": "100000/100000",
    "RATE_LIMIT_DEFAULT": "100000/100000",
    # One follow-up "hour" is an hour: no follow-up falls due during a run.
    "FOLLOW_UP_HOUR_SECONDS": "3600",
}


@dataclass
class Target:
    """Where the load goes and which processes' CPU is measured."""

    gateway_url: str
    api_key: str
    bare_url: str
    mongo_url: str | None
    mongo_db: str
    nats_url: str | None
    simulator_url: str | None
    work_dir: Path
    # Processes whose CPU time is read around each phase, by name.
    pids: dict[str, int] = field(default_factory=dict)
    # The subset that makes up Caseflow (its services, NATS, MongoDB), for "CPU per request of the stack".
    stack_processes: tuple[str, ...] = ()
    gateway_pid: int | None = None
    case_pid: int | None = None
    echo_subject: str = "bench.echo"
    # Each service's Prometheus endpoint (the number of series it exports tells a label-cardinality leak).
    metrics_urls: dict[str, str] = field(default_factory=dict)
    # Starts another gateway on the same NATS and MongoDB with these settings overridden (own stack only).
    extra_gateway: Callable[[Mapping[str, str], str], contextlib.AbstractContextManager[tuple[str, int]]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}


def metric_series(urls: dict[str, str]) -> dict[str, int]:
    """How many samples each service's `/metrics` exports (comment lines aside)."""
    counts: dict[str, int] = {}
    for name, url in urls.items():
        try:
            text = httpx.get(url, timeout=10).raise_for_status().text
        except httpx.HTTPError:
            continue
        counts[name] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return counts


def _pid(process: ManagedProcess) -> int:
    assert process.process is not None
    return process.process.pid


@contextlib.contextmanager
def _baseline_servers(work_dir: Path, nats_url: str | None) -> Iterator[tuple[str, dict[str, int]]]:
    port = free_port()
    bare = ManagedProcess(
        "bare_litestar",
        [sys.executable, "-m", "bench.bare_app", "--port", str(port)],
        env=os.environ,
        log_dir=work_dir,
    )
    bare.start()
    assert bare.process is not None
    wait_for_port(port, process=bare.process)
    pids = {"bare_litestar": _pid(bare)}
    echo: ManagedProcess | None = None
    if nats_url is not None:
        echo = ManagedProcess(
            "nats_echo", [sys.executable, "-m", "bench.echo", "--url", nats_url], env=os.environ, log_dir=work_dir
        )
        echo.start()
        pids["nats_echo"] = _pid(echo)
    try:
        httpx.get(f"http://127.0.0.1:{port}/bare", timeout=10).raise_for_status()
        yield f"http://127.0.0.1:{port}", pids
    finally:
        if echo is not None:
            echo.stop()
        bare.stop()


@contextlib.contextmanager
def _extra_gateway(stack: Stack, overrides: Mapping[str, str], name: str) -> Iterator[tuple[str, int]]:
    """Another gateway replica of `stack`: its URL and pid."""
    port = free_port()
    env = {**stack.env, **overrides, "GATEWAY_PORT": str(port)}
    process = ManagedProcess(name, [sys.executable, "-m", "services.gateway"], env=env, log_dir=stack.log_dir)
    process.start()
    try:
        assert process.process is not None
        wait_for_port(port, process=process.process)
        url = f"http://127.0.0.1:{port}"
        httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
        yield url, _pid(process)
    finally:
        process.stop()


@contextlib.contextmanager
def local_target(
    config: BenchConfig, *, env_overrides: Mapping[str, str] | None = None, baselines: bool = True
) -> Iterator[Target]:
    """NATS, embedded MongoDB, the simulator and the six services on free ports in a temporary directory (with
    `env_overrides` on top of STACK_ENV; without `baselines`, no bare app or echo responder, and no `bare_url`)."""
    with tempfile.TemporaryDirectory(prefix="caseflow-bench-") as tmp:
        work_dir = Path(tmp)
        nats = NatsServer(log_dir=work_dir, store_dir=work_dir / "jetstream")
        sqlite = work_dir / "mongo" / "caseflow.sqlite" if config.mongo_engine == "sqlite" else None
        if sqlite is not None:
            sqlite.parent.mkdir(parents=True)
        mongo = EmbeddedMongo(log_dir=work_dir, sqlite_path=sqlite)
        nats.start()
        mongo.start()
        stack = Stack(log_dir=work_dir, nats=nats, mongo_url=mongo.url, env={**STACK_ENV, **(env_overrides or {})})
        try:
            stack.start()
            client = stack.admin("create-client", "--name", "bench", "--plan", "unlimited")
            servers: contextlib.AbstractContextManager[tuple[str, dict[str, int]]] = (
                _baseline_servers(work_dir, nats.url) if baselines else contextlib.nullcontext(("", {}))
            )
            with servers as (bare_url, baseline_pids):
                services = {name: _pid(process) for name, process in stack.services.items()}
                pids = {**services, "nats": _pid(nats), "mongodb": _pid(mongo)}
                yield Target(
                    gateway_url=stack.gateway_url,
                    api_key=str(client["apiKey"]),
                    bare_url=bare_url,
                    mongo_url=mongo.url,
                    mongo_db=BENCH_DB,
                    nats_url=nats.url,
                    simulator_url=stack.simulator.url,
                    work_dir=work_dir,
                    pids={**pids, "simulator": _pid(stack.simulator), **baseline_pids},
                    stack_processes=tuple(pids),
                    gateway_pid=services["gateway"],
                    case_pid=services["case"],
                    metrics_urls={name: stack.metrics_url(name) for name in stack.services},
                    extra_gateway=functools.partial(_extra_gateway, stack),
                )
        finally:
            stack.stop()
            mongo.stop()
            nats.stop()


@contextlib.contextmanager
def external_target(config: BenchConfig) -> Iterator[Target]:
    """A running gateway (BENCH_URL); the baselines still run here, against its NATS and MongoDB if given."""
    assert config.url is not None
    assert config.api_key is not None
    with (
        tempfile.TemporaryDirectory(prefix="caseflow-bench-") as tmp,
        _baseline_servers(Path(tmp), config.nats_url) as (bare_url, baseline_pids),
    ):
        yield Target(
            gateway_url=config.url,
            api_key=config.api_key,
            bare_url=bare_url,
            mongo_url=config.mongo_url,
            mongo_db=config.mongo_db,
            nats_url=config.nats_url,
            simulator_url=config.simulator_url,
            work_dir=Path(tmp),
            pids={**config.pids, **baseline_pids},
            stack_processes=tuple(config.pids),
            gateway_pid=config.pids.get("gateway"),
            case_pid=config.pids.get("case"),
        )


def target(config: BenchConfig) -> contextlib.AbstractContextManager[Target]:
    return external_target(config) if config.url else local_target(config)

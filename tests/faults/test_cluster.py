"""The stack of `make run-cluster` under faults: a three-node NATS JetStream cluster (every stream and durable
consumer with three replicas), two replicas of every service and two gateways, all real processes.

- SIGKILL of the node leading CASE_COMMANDS during 200 creates sent to both gateways: every case answered 201
  reaches RUNNING with exactly one first email; the time until the stream has a new leader is reported.
- A rolling restart of every service, one replica at a time, under steady load: no accepted case lost, no email
  doubled, the only failed requests are 503s with Retry-After (their number is reported).
- A stream with its replicas spread keeps serving reads (and takes writes) while one node is down.

Clients know every node (NATS_URL lists all three), as in production. The HTTP client stands in for a load
balancer and a careful client: a refused connection (a stopped gateway; nothing was sent) goes to the other
gateway, and a request that a stopping gateway never answered because it closed the idle keep-alive connection the
request was written to (HTTP/1.1's unavoidable close race) is sent again when replaying it is safe: a GET, or a
POST carrying an Idempotency-Key, the rule Go's net/http applies. Both are counted and reported.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from deploy.processes import (
    ClusterRoutes,
    EmbeddedMongo,
    ManagedProcess,
    NatsServer,
    Stack,
    free_port,
    wait_for_port,
)
from shared.subjects import ALL_STREAMS, CASE_COMMANDS
from tests.faults.conftest import emails_to_run, silent_case
from tests.support.api import headers, new_client

NODES = ("nats-1", "nats-2", "nats-3")
CASES = 200
# Steady, not saturating: the embedded stack serves ~12-15 creates/s on two quiet cores (bench/README.md); at 10/s
# on a shared two-core machine MongoDB fell behind, every RPC timed out and the retries fed the overload.
# At 4/s on a machine loaded by other suites (load average ~10) MongoDB still fell behind for good.
STEADY_CREATES_PER_SECOND = 2
BACKEND = ("auth", "billing", "case", "agentmail_adapter", "webhook")


@dataclass
class ClusterStack:
    nodes: dict[str, NatsServer]
    mongo: EmbeddedMongo
    stack: Stack
    # Every replica: name → process; gateways by their URL.
    replicas: dict[str, ManagedProcess] = field(default_factory=dict)
    gateway_urls: dict[str, str] = field(default_factory=dict)

    def test_client_url(self, *, excluding: str = "") -> list[str]:
        return [node.url for name, node in self.nodes.items() if name != excluding]

    def processes(self) -> list[ManagedProcess]:
        return list(self.replicas.values())


async def wait_for_jetstream(urls: list[str], *, timeout: float = 60.0) -> None:
    """Until the cluster has elected a metadata leader (JetStream answers its API)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=1)
            try:
                await connection.jetstream().account_info()
                return
            finally:
                await connection.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _replicas_current(js: Any, stream: str) -> bool:
    try:
        info = await js.stream_info(stream)
    except nats.errors.Error:
        return False  # no leader to answer yet
    cluster = info.cluster
    replicas = (cluster.replicas or []) if cluster is not None else []
    return cluster is not None and bool(cluster.leader) and len(replicas) == 2 and all(r.current for r in replicas)


async def wait_for_current_replicas(urls: list[str], *, timeout: float = 180.0) -> None:
    """Until every Caseflow stream has a leader and all its replicas have caught up: a node that just came
    back must be current before another may go, or the streams lose their quorum of two."""
    deadline = time.monotonic() + timeout
    connection = await nats.connect(urls, connect_timeout=2)
    try:
        js = connection.jetstream(timeout=2)
        for stream in ALL_STREAMS:
            while not await _replicas_current(js, stream.name):
                assert time.monotonic() < deadline, f"{stream.name} has no current replicas"
                await asyncio.sleep(0.5)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    work = tmp_path_factory.mktemp("cluster")
    routes = ClusterRoutes({name: free_port() for name in NODES})
    nodes = {name: NatsServer(log_dir=work, store_dir=work / name, name=name, cluster=routes) for name in NODES}
    for node in nodes.values():
        node.start()
    (work / "mongo").mkdir()
    mongo = EmbeddedMongo(log_dir=work, sqlite_path=work / "mongo" / "caseflow.sqlite")
    mongo.start()
    asyncio.run(wait_for_jetstream([node.url for node in nodes.values()]))
    stack = Stack(
        log_dir=work,
        nats=nodes["nats-1"],
        nats_url=",".join(node.server_url for node in nodes.values()),
        mongo_url=mongo.url,
        env={
            "STREAM_REPLICAS": "3",
            "MONGO_DB": "caseflow_cluster",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "RATE_LIMIT_CREATE": "10000/10000",
            "RATE_LIMIT_DEFAULT": "10000/10000",
            "CONSUMER_BACKOFF_SECONDS": "0.5,1,2,3",
            "CONSUMER_MAX_DELIVER": "1000",
            "AGENTMAIL_TIMEOUT_SECONDS": "2",
            "SEND_TIMEOUT_SECONDS": "15",
            "RPC_TIMEOUT_SECONDS": "3",
            "MONGO_TIMEOUT_SECONDS": "3",
            "SHUTDOWN_GRACE_SECONDS": "10",
        },
    )
    cluster = ClusterStack(nodes=nodes, mongo=mongo, stack=stack)
    for name, process in stack.services.items():
        cluster.replicas[f"{name}-1"] = process
    # Second replicas (metrics off: the first replica holds the exporter port), and a second gateway.
    second_gateway_port = free_port()
    for name in (*BACKEND, "gateway"):
        env = {**stack.env, **({"GATEWAY_PORT": str(second_gateway_port)} if name == "gateway" else {})}
        cluster.replicas[f"{name}-2"] = ManagedProcess(f"{name}-2", [*stack.services[name].argv], env=env, log_dir=work)
    cluster.gateway_urls = {"gateway-1": stack.gateway_url, "gateway-2": f"http://127.0.0.1:{second_gateway_port}"}
    try:
        stack.simulator.start()
        for process in cluster.processes():
            process.start()
        stack.wait_ready(timeout=120)
        wait_for_port(second_gateway_port, timeout=60)
        yield cluster
    finally:
        for process in cluster.processes():
            process.stop()
        stack.simulator.stop()
        mongo.stop()
        for node in nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def api_key(cluster: ClusterStack) -> str:
    return str(new_client(cluster.stack)["apiKey"])


@dataclass
class Outcomes:
    created: dict[str, str] = field(default_factory=dict)  # caseId → counterparty address
    unavailable: int = 0  # 503s, each with Retry-After
    in_flight: int = 0  # 409 IDEMPOTENCY_KEY_IN_USE: a retry overtook its own earlier attempt (retried too)
    rerouted: int = 0  # refused connections to a stopped gateway, sent to the other one
    unanswered: int = 0  # requests on a keep-alive connection a stopping gateway closed, replayed
    last_unavailable_at: float = 0.0  # time.monotonic() of the last 503
    created_sent_at: list[float] = field(default_factory=list)  # when each attempt answered 201 was sent
    reads: int = 0
    other: list[str] = field(default_factory=list)

    def record(self, response: httpx.Response, address: str | None, *, sent_at: float = 0.0) -> None:
        if response.status_code == 201 and address is not None:
            self.created[response.json()["data"]["caseId"]] = address
            self.created_sent_at.append(sent_at)
        elif response.status_code == 200:
            self.reads += 1
        elif response.status_code == 503 and response.headers.get("retry-after") and not response.json()["ok"]:
            self.unavailable += 1
            self.last_unavailable_at = time.monotonic()
        elif response.status_code == 409 and response.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE":
            self.in_flight += 1
        else:
            self.other.append(f"{response.status_code} {response.text[:200]}")


class Gateways:
    """Both gateways behind a stand-in load balancer: round-robin, and a refused connection goes to the other."""

    def __init__(self, cluster: ClusterStack, api_key: str, outcomes: Outcomes) -> None:
        self.urls = list(cluster.gateway_urls.values())
        self.turn = itertools.cycle(range(len(self.urls)))
        self.clients = [httpx.AsyncClient(base_url=url, timeout=30, headers=headers(api_key)) for url in self.urls]
        self.outcomes = outcomes

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        first = next(self.turn)
        replayable = method == "GET" or "Idempotency-Key" in kwargs.get("headers", {})
        for attempt in range(len(self.clients) * 3):
            client = self.clients[(first + attempt) % len(self.clients)]
            try:
                return await client.request(method, path, **kwargs)
            except httpx.ConnectError:
                self.outcomes.rerouted += 1
                await asyncio.sleep(0.2)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # "Server disconnected without sending a response", or the same close seen as a reset (the
                # request's bytes arrived on a socket the stopping gateway was closing): the gateway closed this
                # idle connection as it stopped, before reading the request (a request it had read is answered
                # before it exits). Sent again only when that is safe, as Go's transport does.
                if not replayable:
                    self.outcomes.other.append(f"{method} {path} unanswered and not replayable: {exc}")
                    return None
                self.outcomes.unanswered += 1
        self.outcomes.other.append(f"no gateway accepted a connection for {method} {path}")
        return None

    async def create(self, run: str, index: int, *, attempts: int = 30) -> None:
        """Create one case as a careful client does: the same Idempotency-Key on every try, and after a 503 (or a
        409 saying the earlier try is still in flight) wait what Retry-After says and try again."""
        body = silent_case(run, index)
        for _ in range(attempts):
            sent_at = time.monotonic()
            response = await self.send("POST", "/cases", json=body, headers={"Idempotency-Key": f"{run}-{index}"})
            if response is None:
                return
            self.outcomes.record(response, body["counterparty"]["address"], sent_at=sent_at)
            if response.status_code not in (409, 503):
                return
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        self.outcomes.other.append(f"create {index} still refused after {attempts} tries")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
async def gateways(cluster: ClusterStack, api_key: str, outcomes: Outcomes) -> AsyncIterator[Gateways]:
    both = Gateways(cluster, api_key, outcomes)
    yield both
    await both.aclose()


async def wait_all_running(gateways: Gateways, case_ids: set[str], *, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = set(case_ids)
    while pending and time.monotonic() < deadline:
        for case_id in list(pending):
            response = await gateways.send("GET", f"/cases/{case_id}")
            if response is not None and response.status_code == 200:
                data = response.json()["data"]
                if data["status"] == "RUNNING":
                    assert data["attemptCount"] == 1
                    pending.discard(case_id)
        if pending:
            await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} accepted cases never reached RUNNING"


async def emails_per_address(cluster: ClusterStack, run: str) -> dict[str, int]:
    return await emails_to_run(cluster.stack.simulator.url, run)


async def assert_each_case_emailed_once(cluster: ClusterStack, run: str, outcomes: Outcomes) -> None:
    emails = await emails_per_address(cluster, run)
    assert {address: emails.get(address, 0) for address in outcomes.created.values()} == {
        address: 1 for address in outcomes.created.values()
    }
    assert set(emails.values()) <= {1}, "an email was sent twice"


async def stream_leader(cluster: ClusterStack, stream: str, *, excluding: str = "") -> str | None:
    connection = await nats.connect(cluster.test_client_url(excluding=excluding), connect_timeout=2)
    try:
        info = await connection.jetstream(timeout=2).stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None
    except Exception:
        return None
    finally:
        await connection.close()


async def test_killing_the_case_commands_leader_during_200_creates_loses_no_case(
    cluster: ClusterStack, gateways: Gateways, outcomes: Outcomes
) -> None:
    run = uuid.uuid4().hex[:8]
    leader = await stream_leader(cluster, CASE_COMMANDS.name)
    assert leader in cluster.nodes
    semaphore = asyncio.Semaphore(8)
    failover_seconds: list[float] = []
    killed_at: list[float] = []

    async def create(index: int) -> None:
        await asyncio.sleep(index * 0.05)  # 200 creates over 10 s, the kill 1.5 s in
        async with semaphore:
            await gateways.create(run, index)

    async def kill_the_leader() -> None:
        await asyncio.sleep(1.5)  # mid-burst
        cluster.nodes[leader].kill()
        killed_at.append(time.monotonic())
        new_leader = None
        for _ in range(600):  # a minute at most
            new_leader = await stream_leader(cluster, CASE_COMMANDS.name, excluding=leader)
            if new_leader not in (None, leader):
                break
            await asyncio.sleep(0.1)
        failover_seconds.append(time.monotonic() - killed_at[0])
        assert new_leader != leader

    await asyncio.gather(*(create(i) for i in range(CASES)), kill_the_leader())
    accepted_again = min(sent for sent in outcomes.created_sent_at if sent > killed_at[0]) - killed_at[0]
    try:
        print(
            f"\nnode {leader} killed: CASE_COMMANDS had a new leader after {failover_seconds[0]:.2f} s; the first "
            f"create accepted again was sent {accepted_again:.2f} s "
            f"after the kill, the last 503 answered {outcomes.last_unavailable_at - killed_at[0]:.2f} s after it; "
            f"{len(outcomes.created)} cases answered 201, after {outcomes.unavailable} answers 503 with "
            f"Retry-After and {outcomes.in_flight} 409 IDEMPOTENCY_KEY_IN_USE that the client retried"
        )
        assert not outcomes.other, outcomes.other
        # Every create was eventually accepted (a 503 during the election is retried with the same key).
        assert len(outcomes.created) == CASES
        await wait_all_running(gateways, set(outcomes.created))
        await assert_each_case_emailed_once(cluster, run, outcomes)
    finally:
        cluster.nodes[leader].start()
        await wait_for_jetstream([node.url for node in cluster.nodes.values()])
        await wait_for_current_replicas([node.url for node in cluster.nodes.values()])


async def restart_replica(cluster: ClusterStack, name: str) -> None:
    process = cluster.replicas[name]
    started_before = process.log_text().count("FastStream app started") if not name.startswith("gateway") else 0
    await asyncio.to_thread(process.stop)
    process.start()
    if name.startswith("gateway"):
        url = cluster.gateway_urls[name]
        await asyncio.to_thread(wait_for_port, int(url.rsplit(":", 1)[1]), timeout=180)
        return
    # Generous: on a shared two-core machine a replica's start under load has taken over a minute.
    deadline = time.monotonic() + 180
    while process.log_text().count("FastStream app started") <= started_before:
        assert process.running, f"{name} exited:\n{process.log_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{name} did not start again"
        await asyncio.sleep(0.2)


async def test_a_rolling_restart_of_every_service_under_load_loses_and_doubles_nothing(
    cluster: ClusterStack, gateways: Gateways, outcomes: Outcomes
) -> None:
    run = uuid.uuid4().hex[:8]
    rolling = asyncio.Event()

    in_flight = asyncio.Semaphore(8)  # a client's connection pool: at most 8 creates outstanding

    async def create(index: int) -> None:
        async with in_flight:
            await gateways.create(run, index)

    async def read(case_id: str) -> None:
        response = await gateways.send("GET", f"/cases/{case_id}")
        if response is not None:
            outcomes.record(response, None)

    async def steady_load() -> int:
        index = 0
        tasks: list[asyncio.Task[None]] = []
        while not rolling.is_set():
            tasks.append(asyncio.create_task(create(index)))
            index += 1
            if outcomes.created:
                tasks.append(asyncio.create_task(read(next(iter(outcomes.created)))))
            await asyncio.sleep(1 / STEADY_CREATES_PER_SECOND)  # a create and a read each time, steadily
        await asyncio.gather(*tasks)
        return index

    async def roll() -> None:
        await asyncio.sleep(1.0)
        for service in (*BACKEND, "gateway"):
            for replica in (1, 2):
                await restart_replica(cluster, f"{service}-{replica}")
        await asyncio.sleep(1.0)
        rolling.set()

    sent = await asyncio.gather(steady_load(), roll())
    print(
        f"\nrolling restart of {2 * (len(BACKEND) + 1)} replicas: {len(outcomes.created)} of {sent[0]} cases "
        f"answered 201, {outcomes.reads} reads 200, {outcomes.unavailable} requests answered 503 with "
        f"Retry-After (retried), {outcomes.in_flight} 409 IDEMPOTENCY_KEY_IN_USE (retried), {outcomes.rerouted} "
        f"connections refused by a stopping gateway and sent to the other, {outcomes.unanswered} requests on "
        "keep-alive connections a stopping gateway closed unread (replayed)"
    )
    assert not outcomes.other, outcomes.other
    assert len(outcomes.created) == sent[0]
    await wait_all_running(gateways, set(outcomes.created))
    await assert_each_case_emailed_once(cluster, run, outcomes)


async def test_a_stream_with_spread_replicas_serves_reads_and_writes_with_a_node_down(
    cluster: ClusterStack, gateways: Gateways, outcomes: Outcomes, tmp_path: Path
) -> None:
    name = f"SPREAD_{uuid.uuid4().hex[:6].upper()}"
    subject = f"spread.{name.lower()}"
    connection = await nats.connect(cluster.test_client_url(), connect_timeout=2)
    js = connection.jetstream()
    info = await js.add_stream(StreamConfig(name=name, subjects=[f"{subject}.>"], num_replicas=3))
    assert info.cluster is not None
    assert {info.cluster.leader, *(replica.name for replica in info.cluster.replicas or [])} == set(NODES)
    for index in range(20):
        await js.publish(f"{subject}.{index}", str(index).encode(), stream=name)
    await connection.close()

    # Take down the stream's leader, the worst node to lose, once every replica has caught up.
    await wait_for_current_replicas(cluster.test_client_url())
    down = info.cluster.leader
    assert down is not None
    cluster.nodes[down].stop()
    try:
        connection = await nats.connect(cluster.test_client_url(excluding=down), connect_timeout=2)
        js = connection.jetstream(timeout=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                stored = await js.stream_info(name)
                if stored.cluster is not None and stored.cluster.leader not in (None, down):
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
        assert stored.state.messages == 20
        # Every message reads back, and the stream still takes writes (two of three replicas are a quorum).
        assert [(await js.get_msg(name, seq)).data for seq in range(1, 21)] == [str(i).encode() for i in range(20)]
        await js.publish(f"{subject}.late", b"late", stream=name)
        assert (await js.stream_info(name)).state.messages == 21
        await js.delete_stream(name)
        await connection.close()

        # Caseflow itself keeps working: a case created now reaches RUNNING and is emailed once.
        run = uuid.uuid4().hex[:8]
        for index in range(5):
            await gateways.create(run, index)
        assert not outcomes.other, outcomes.other
        await wait_all_running(gateways, set(outcomes.created))
        await assert_each_case_emailed_once(cluster, run, outcomes)
    finally:
        cluster.nodes[down].start()
        await wait_for_jetstream([node.url for node in cluster.nodes.values()])
        await wait_for_current_replicas([node.url for node in cluster.nodes.values()])

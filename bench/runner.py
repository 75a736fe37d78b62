"""The bench's scenarios in order: generator ceiling, baselines, the API routes, the worker, the profile.

Key design decision: baselines run in the same process tree and the same run as the scenarios (same
machine state, same servers), and every HTTP scenario and its baseline see the same offered load and VUs,
so the ratios hold even when the absolute numbers move with the machine. Between scenarios the run waits
until the stack's CPU is idle, so asynchronous work one scenario caused (emails being sent for created
cases, answers being judged) is not billed to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
from pymongo import AsyncMongoClient

from bench.burst import Burst, burst, spread
from bench.config import BenchConfig
from bench.cpu import CpuMeter, children_cpu_seconds
from bench.hold import pause, resume
from bench.k6 import HttpPhase, run_phase
from bench.loadgen import BASELINE_COLLECTION, GeneratorReport
from bench.report import Group, Phase, ProfileSummary, Scenario, compare, phase_of
from bench.stack import Target
from bench.stats import LoadResult, ratio
from bench.summary import GET_CASE_AT_SHARE_MODE, GET_CASE_SATURATION_SHARE
from services.case import domain
from services.case.model import InputRequestRecord, to_document
from services.case.store import CaseStore
from shared.clock import now_ms
from shared.contracts.case import NOTHING_SCHEDULED, NewCase
from shared.mongo import Document, create_mongo_client
from shared.settings import CommonSettings
from shared.subjects import CASE_COMMANDS, Consumer
from simulator.cases import case_body

log = logging.getLogger("bench")

Mode = Literal["fixed", "saturation"]
# Wraps one load phase (warm-up included) by its mode and k6 tag; what it does around the phase is not measured.
type AroundPhase = Callable[[str, str], contextlib.AbstractContextManager[None]]
BASELINE_DB = "bench_baseline"
INPUT_REQUEST_ID = "bench-input-request"


def new_case_body(unique: str) -> dict[str, Any]:
    """A `POST /cases` body whose reference and counterparty carry `unique`: a `silent` counterparty (it never
    answers) and the default 72-hour follow-up delay, so a created case costs exactly one email."""
    base = case_body()
    return case_body(
        clientReferenceId=f"ref-{unique}",
        counterparty={**base["counterparty"], "address": f"silent-{unique}@sim.example"},
    )


def at_share(throughput_rps: float, share: float) -> int:
    """The fixed rate (whole requests per second, at least 1) that is `share` of a measured throughput."""
    return max(1, round(throughput_rps * share))


def slug(text: str) -> str:
    """`POST /cases/{id}` → `post-cases-id`: safe inside an email address's local part and an Idempotency-Key."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass
class Runner:
    config: BenchConfig
    target: Target

    def __post_init__(self) -> None:
        self.meter = CpuMeter(self.target.pids)
        self.run_tag = uuid.uuid4().hex[:8]
        self.scenarios: dict[str, Scenario] = {}

    # ---- measuring ---------------------------------------------------------------------------------------

    def measure(self, mode: str, offered: str, action: Callable[[], LoadResult], *, accounted: Sequence[str]) -> Phase:
        """Run `action` (one load phase) and attribute the CPU the measured processes spent meanwhile."""
        before = self.meter.snapshot()
        generator_before = children_cpu_seconds()
        load = action()
        generator = children_cpu_seconds() - generator_before
        cpu = CpuMeter.delta(before, self.meter.snapshot())
        return phase_of(mode, offered, load, cpu, accounted=accounted, generator_cpu_s=generator)

    def idle_cpu(self, seconds: float = 3.0) -> dict[str, float]:
        """CPU-seconds per second each of the stack's processes uses with no load (background loops: the
        scheduler's scan, the outbox relay, the webhook poll), to read the low-load CPU figures against."""
        before = self.meter.snapshot()
        time.sleep(seconds)
        delta = CpuMeter.delta(before, self.meter.snapshot())
        return {name: round(delta[name] / seconds, 4) for name in self.target.stack_processes if name in delta}

    def wait_quiet(self, *, timeout_s: float = 300.0, idle_cpu: float = 0.3) -> float:
        """Wait until the stack's processes together use under `idle_cpu` CPU-seconds per second (twice in a
        row); returns the seconds waited."""
        started = time.monotonic()
        names = self.target.stack_processes
        quiet_windows = 0
        while time.monotonic() - started < timeout_s and names:
            before = self.meter.snapshot()
            time.sleep(1.0)
            used = sum(CpuMeter.delta({n: before[n] for n in names if n in before}, self.meter.snapshot()).values())
            quiet_windows = quiet_windows + 1 if used < idle_cpu else 0
            if quiet_windows >= 2:
                break
        return round(time.monotonic() - started, 1)

    def emails_to(self, fragment: str) -> int:
        """How many emails the simulator's outbox holds to an address containing `fragment`."""
        assert self.target.simulator_url is not None
        response = httpx.get(f"{self.target.simulator_url}/_sim/outbox", params={"to": fragment}, timeout=60)
        count: int = response.raise_for_status().json()["count"]
        return count

    @contextlib.contextmanager
    def outreach_held(self, record: dict[str, dict[str, Any]], mode: str, tag: str) -> Iterator[None]:
        """Hold the case service's created-command consumer paused for one phase, so the phase measures the
        create request alone; then resume it and wait until the stack has sent what waited (not measured).
        `record[mode]` gets what was held and what was sent while held (0, or outreach leaked into the phase)."""
        target = self.target
        if target.nats_url is None or target.simulator_url is None:
            record[mode] = {"held": False}
            yield
            return
        stream, consumer = CASE_COMMANDS.name, str(Consumer.CASE_CREATED)
        # Bounded, so a bench that dies mid-phase leaves a consumer that resumes by itself.
        at_pause = asyncio.run(pause(target.nats_url, stream, consumer, for_at_most_s=self.config.duration_s + 120))
        try:
            yield
            emails_while_held = self.emails_to(tag)
        finally:
            held = asyncio.run(resume(target.nats_url, stream, consumer))
        released_after_s = self.wait_quiet()
        record[mode] = {
            "held": True,
            "created_commands_held": held.pending,
            "delivered_while_held": held.delivered - at_pause.delivered,
            "emails_while_held": emails_while_held,
            "emails_after_release": self.emails_to(tag),
            "release_wait_s": released_after_s,
        }

    def http_scenario(
        self,
        name: str,
        group: Group,
        description: str,
        phase_for: Callable[[Literal["rate", "vus"], float, str], HttpPhase],
        *,
        accounted: Sequence[str],
        modes: Sequence[Mode] = ("fixed", "saturation"),
        baseline: str | None = None,
        warmup: bool = True,
        around: AroundPhase | None = None,
    ) -> Scenario:
        config = self.config
        wrap: AroundPhase = around or (lambda _mode, _tag: contextlib.nullcontext())
        if warmup and config.warmup_s > 0:
            tag = f"{slug(name)}-warmup-{self.run_tag}"
            with wrap("warmup", tag):
                run_phase(phase_for("vus", config.warmup_s, tag))
        scenario = Scenario(name=name, group=group, description=description, baseline=baseline)
        used_ids = 0
        for mode in modes:
            executor: Literal["rate", "vus"] = "rate" if mode == "fixed" else "vus"
            tag = f"{slug(name)}-{mode}-{self.run_tag}"
            phase = phase_for(executor, config.duration_s, tag)
            phase = msgspec.structs.replace(phase, ids_offset=used_ids)
            offered = f"{phase.rate} req/s" if mode == "fixed" else f"{phase.vus} VUs"
            with wrap(mode, tag):
                scenario.phases.append(
                    self.measure(mode, offered, functools.partial(run_phase, phase), accounted=accounted)
                )
            used_ids += scenario.phases[-1].load.requests
        if baseline is not None and baseline in self.scenarios:
            scenario.ratios = compare(scenario, self.scenarios[baseline])
        self.scenarios[name] = scenario
        return scenario

    def http(
        self,
        base_url: str,
        method: Literal["GET", "POST"],
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        expect_status: list[int] | None = None,
        ids_file: Path | None = None,
        ids_unique: bool = False,
        idempotency: bool = False,
    ) -> Callable[[Literal["rate", "vus"], float, str], HttpPhase]:
        def phase_for(executor: Literal["rate", "vus"], duration_s: float, tag: str) -> HttpPhase:
            return HttpPhase(
                base_url=base_url,
                method=method,
                path=path,
                executor=executor,
                duration_s=duration_s,
                rate=self.config.write_rate if method == "POST" else self.config.rate,
                vus=self.config.vus,
                max_vus=self.config.max_vus,
                headers=headers or {},
                body=body,
                idempotency=idempotency,
                ids_file=str(ids_file) if ids_file else None,
                ids_unique=ids_unique,
                expect_status=expect_status or [200],
                tag=tag,
            )

        return phase_for

    def loadgen_scenario(
        self,
        name: str,
        description: str,
        target: str,
        url: str,
        *,
        accounted: Sequence[str],
        db: str = "",
        extra_args: Sequence[str] = (),
    ) -> Scenario:
        config = self.config

        own_cpu: list[float] = []

        def run(mode: Literal["rate", "vus"], duration_s: float) -> LoadResult:
            argv = [sys.executable, "-m", "bench.loadgen", target, "--url", url, "--mode", mode]
            argv += ["--duration", str(duration_s), "--rate", str(config.rate)]
            argv += ["--vus", str(config.vus if mode == "vus" else config.max_vus)]
            if db:
                argv += ["--db", db]
            argv += extra_args
            done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 90, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"bench.loadgen {target} failed: {done.stderr[-2000:]}")
            report = msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=GeneratorReport)
            own_cpu.append(report.cpu_s)
            return report.load

        if config.warmup_s > 0:
            run("vus", config.warmup_s)
        scenario = Scenario(name=name, group="baseline", description=description)
        for mode in ("fixed", "saturation"):
            executor: Literal["rate", "vus"] = "rate" if mode == "fixed" else "vus"
            offered = f"{config.rate} req/s" if mode == "fixed" else f"{config.vus} VUs"
            action = functools.partial(run, executor, config.duration_s)
            phase = self.measure(mode, offered, action, accounted=accounted)
            # The generator's CPU while it drove the load (not its interpreter's start-up).
            phase.generator_cpu_s_per_request = round(own_cpu[-1] / phase.load.ok, 6) if phase.load.ok else None
            scenario.phases.append(phase)
        self.scenarios[name] = scenario
        return scenario

    # ---- scenarios ---------------------------------------------------------------------------------------

    def generator_ceiling(self) -> list[Scenario]:
        """k6 at saturation against the cheapest endpoints there are: its own CPU per request is the point."""
        target = self.target
        return [
            self.http_scenario(
                "k6 → GET /healthz",
                "generator",
                "k6's ceiling against the gateway's liveness route (no auth, no NATS, no MongoDB).",
                self.http(target.gateway_url, "GET", "/healthz"),
                accounted=["gateway"],
                modes=("saturation",),
            ),
            self.http_scenario(
                "k6 → bare GET",
                "generator",
                "k6's ceiling against a bare Litestar route served by uvicorn outside Caseflow.",
                self.http(target.bare_url, "GET", "/bare"),
                accounted=["bare_litestar"],
                modes=("saturation",),
            ),
        ]

    def baselines(self) -> list[Scenario]:
        target = self.target
        body = json.dumps(new_case_body("baseline-__UNIQUE__"))
        done = [
            self.http_scenario(
                "baseline: bare GET",
                "baseline",
                "A Litestar GET route returning a small envelope (uvicorn, httptools, same machine).",
                self.http(target.bare_url, "GET", "/bare"),
                accounted=["bare_litestar"],
            ),
            self.http_scenario(
                "baseline: bare POST",
                "baseline",
                "A Litestar POST route decoding a POST /cases-sized JSON body.",
                self.http(target.bare_url, "POST", "/bare", body=body, expect_status=[201]),
                accounted=["bare_litestar"],
            ),
        ]
        if target.nats_url is not None:
            done.append(
                self.loadgen_scenario(
                    "baseline: NATS echo",
                    "Request/reply through the same nats-server to a plain nats-py responder.",
                    "nats",
                    target.nats_url,
                    accounted=["nats", "nats_echo"],
                )
            )
        if target.mongo_url is not None:
            setup_started = time.perf_counter()
            asyncio.run(seed_baseline_collection(target.mongo_url))
            setup_s = round(time.perf_counter() - setup_started, 2)
            for kind, description in (
                ("find", "find_one by _id of a case-shaped document (PyMongo async, same server)."),
                ("insert", "insert_one of a case-shaped document (PyMongo async, same server)."),
            ):
                scenario = self.loadgen_scenario(
                    f"baseline: MongoDB {kind}_one",
                    description,
                    f"mongo-{kind}",
                    target.mongo_url,
                    accounted=["mongodb"],
                    db=BASELINE_DB,
                )
                scenario.setup_s = setup_s
                done.append(scenario)
        return done

    def create_case(self) -> Scenario:
        target = self.target
        held: dict[str, dict[str, Any]] = {}
        scenario = self.http_scenario(
            "POST /cases",
            "api",
            "Create a case with a fresh Idempotency-Key (auth, billing reserve, case insert, JetStream publish), "
            "with the outreach it causes held back during each phase.",
            self.http(
                target.gateway_url,
                "POST",
                "/cases",
                headers=target.headers,
                body=json.dumps(new_case_body("__UNIQUE__")),
                expect_status=[201],
                idempotency=True,
            ),
            accounted=target.stack_processes,
            baseline="baseline: bare POST",
            around=functools.partial(self.outreach_held, held),
        )
        scenario.context["outreach_held"] = held
        if all(phase.get("held") for phase in held.values()):
            scenario.notes.append(
                "The request path alone: during each phase (warm-up included) the case service's created-command "
                "consumer is paused, so no case starts and no email is sent; after it the consumer resumes and the "
                "run waits (unmeasured) until the stack is idle. The pipeline is the worker scenario."
            )
        else:
            scenario.notes.append(
                "Outreach NOT held back (needs NATS and the simulator): the phase also pays for the first emails "
                "its cases cause."
            )
        scenario.context["quiet_wait_s"] = self.wait_quiet()
        return scenario

    def get_case(self, ids_file: Path) -> Scenario:
        target = self.target
        phase_for = self.http(target.gateway_url, "GET", "/cases/{id}", headers=target.headers, ids_file=ids_file)
        scenario = self.http_scenario(
            "GET /cases/{id}",
            "api",
            "Read one case (auth from the gateway's cache, NATS request to case, MongoDB find_one); last, a fixed "
            f"rate of {GET_CASE_SATURATION_SHARE:.0%} of the saturation throughput just measured.",
            phase_for,
            accounted=target.stack_processes,
            baseline="baseline: bare GET",
        )
        saturated = scenario.phase("saturation")
        if saturated is not None and saturated.load.throughput_rps:
            rate = at_share(saturated.load.throughput_rps, GET_CASE_SATURATION_SHARE)
            phase = msgspec.structs.replace(
                phase_for("rate", self.config.duration_s, f"get-case-share-{self.run_tag}"), rate=rate
            )
            scenario.phases.append(
                self.measure(
                    GET_CASE_AT_SHARE_MODE,
                    f"{rate} req/s",
                    functools.partial(run_phase, phase),
                    accounted=target.stack_processes,
                )
            )
        return scenario

    def list_cases(self) -> Scenario:
        target = self.target
        return self.http_scenario(
            "GET /cases (page of 50)",
            "api",
            "The first page (limit 50) of the bench client's cases, ordered by (updatedAt, caseId).",
            self.http(target.gateway_url, "GET", "/cases?limit=50", headers=target.headers),
            accounted=target.stack_processes,
            baseline="baseline: bare GET",
        )

    def list_baseline(self) -> Scenario | None:
        """The bare `find` behind `GET /cases?limit=50`: the same filter, sort and limit on the same collection,
        straight from PyMongo (run after list_cases, so both see the same documents)."""
        target = self.target
        if target.mongo_url is None:
            return None
        client_id = asyncio.run(bench_client_id(target.mongo_url, target.mongo_db))
        if client_id is None:
            return None
        return self.loadgen_scenario(
            "baseline: MongoDB list page",
            "find(clientId, pendingCreate=false).sort(updatedAt, _id).limit(50) on the cases collection "
            "(PyMongo async, same server).",
            "mongo-list",
            target.mongo_url,
            accounted=["mongodb"],
            db=target.mongo_db,
            extra_args=["--client-id", client_id],
        )

    def burst_creates(self, *, count: int = 240, concurrency: int = 32) -> Scenario:
        """240 creates from 32 clients at once: what each is answered and how fast (no 5xx but a 503 with
        Retry-After is allowed; admission control sheds, it never times out)."""
        target = self.target
        action_result: dict[str, Burst] = {}

        def action() -> LoadResult:
            action_result["burst"] = asyncio.run(
                burst(
                    urls=[target.gateway_url],
                    method="POST",
                    path="/cases",
                    headers=target.headers,
                    body=new_case_body(f"burst-{self.run_tag}-__UNIQUE__"),
                    count=count,
                    concurrency=concurrency,
                )
            )
            return action_result["burst"].load(ok=[201, 429, 503])

        phase = self.measure(
            "burst", f"{count} creates, {concurrency} clients", action, accounted=target.stack_processes
        )
        done = action_result["burst"]
        scenario = Scenario(
            name=f"burst: {count} creates / {concurrency} clients",
            group="api",
            description="POST /cases from many clients at once; every answer classified. ok = 201, 429 or 503 "
            "(the answers a client can act on); 5xx_unexpected must be 0.",
            phases=[phase],
            context=done.context(),
        )
        scenario.context["quiet_wait_s"] = self.wait_quiet()
        self.scenarios[scenario.name] = scenario
        return scenario

    def two_gateways(self, ids_file: Path, *, creates: int = 120, burst_tokens: int = 40) -> Scenario:
        """Two extra gateway replicas: GET /cases/{id} throughput through both, then creates spread over both
        against one key whose create bucket has `burst_tokens` and (practically) no refill: a shared throttle
        grants `burst_tokens` in total, per-gateway buckets would grant twice that."""
        target = self.target
        if target.extra_gateway is None:
            raise RuntimeError("needs a stack of the bench's own (extra gateway processes)")
        overrides = {"RATE_LIMIT_CREATE": f"0.001/{burst_tokens}", "THROTTLE_STORE": "nats"}
        ids = json.loads(ids_file.read_text())
        reads = max(200, int(self.config.duration_s * 100))
        with (
            target.extra_gateway(overrides, "gateway-bench-a") as (first, first_pid),
            target.extra_gateway(overrides, "gateway-bench-b") as (second, second_pid),
        ):
            meter = CpuMeter({**self.target.pids, "gateway_a": first_pid, "gateway_b": second_pid})
            accounted = [*target.stack_processes, "gateway_a", "gateway_b"]
            phases: list[Phase] = []
            results: dict[str, Burst] = {}
            plan: list[tuple[str, str, Callable[[], Coroutine[Any, Any, Burst]]]] = [
                (
                    "reads",
                    f"{reads} GET /cases/{{id}}, {self.config.vus} clients",
                    functools.partial(
                        burst,
                        urls=[first, second],
                        method="GET",
                        path="",
                        paths=spread(ids, reads),
                        headers=target.headers,
                        count=reads,
                        concurrency=self.config.vus,
                    ),
                ),
                (
                    "throttled creates",
                    f"{creates} creates, 16 clients, burst {burst_tokens}",
                    functools.partial(
                        burst,
                        urls=[first, second],
                        method="POST",
                        path="/cases",
                        headers=target.headers,
                        body=new_case_body(f"two-{self.run_tag}-__UNIQUE__"),
                        count=creates,
                        concurrency=16,
                    ),
                ),
            ]
            for mode, offered, run in plan:
                before = meter.snapshot()
                results[mode] = asyncio.run(run())
                cpu = CpuMeter.delta(before, meter.snapshot())
                ok = [200] if mode == "reads" else [201, 429]
                phases.append(phase_of(mode, offered, results[mode].load(ok=ok), cpu, accounted=accounted))
        # A token is spent before the request goes on, so everything not refused with 429 was granted (a 503
        # from downstream after the throttle still used its token).
        granted = sum(1 for answer in results["throttled creates"].answers if answer.status != 429)
        scenario = Scenario(
            name="two gateways",
            group="api",
            description="Two more gateway replicas on the same NATS and MongoDB: reads spread over both, then "
            f"creates against one key with a create bucket of {burst_tokens} shared through NATS KV.",
            phases=phases,
            context={
                "reads": results["reads"].context(),
                "throttled_creates": results["throttled creates"].context(),
                "throttle_granted": granted,
                "throttle_expected": burst_tokens,
                "throttle_error": ratio(abs(granted - burst_tokens), burst_tokens),
            },
        )
        scenario.context["quiet_wait_s"] = self.wait_quiet()
        self.scenarios[scenario.name] = scenario
        return scenario

    def provide_input(self, ids_file: Path, count: int) -> Scenario:
        target = self.target
        body = json.dumps({"inputRequestId": INPUT_REQUEST_ID, "providedContext": "Vendor id V-2048; pay net 30."})
        scenario = self.http_scenario(
            "POST /cases/{id}/input",
            "api",
            "Answer a case waiting for input (version-checked replace, JetStream publish); each request "
            "answers a different INPUT_NEEDED case.",
            self.http(
                target.gateway_url,
                "POST",
                "/cases/{id}/input",
                headers=target.headers,
                body=body,
                expect_status=[202],
                ids_file=ids_file,
                ids_unique=True,
            ),
            accounted=target.stack_processes,
            baseline="baseline: bare POST",
            warmup=False,
        )
        scenario.context["prepared_cases"] = count
        scenario.notes.append(
            "No warm-up (it would use up prepared cases); every phase takes its own cases, so a phase that "
            "runs out of them shows 409s as failures."
        )
        scenario.context["quiet_wait_s"] = self.wait_quiet()
        return scenario


# ---- data ----------------------------------------------------------------------------------------------------


def setup_client(mongo_url: str) -> AsyncMongoClient[Document]:
    """A client for data set-up: the services' factory, with a deadline fit for bulk work on a busy server
    (the services' own 5 s is for one request)."""
    return create_mongo_client(CommonSettings(mongo_url=mongo_url, mongo_timeout_seconds=300.0), app_name="bench-setup")


async def seed_baseline_collection(mongo_url: str, count: int = 100) -> None:
    """Case-shaped documents for the find_one/insert_one baselines (a fresh collection each run)."""
    mongo = setup_client(mongo_url)
    try:
        collection = mongo[BASELINE_DB][BASELINE_COLLECTION]
        await collection.drop()
        body = msgspec.convert(new_case_body("seed"), NewCase)
        documents = [
            to_document(domain.new_case(case_id=str(uuid.uuid4()), client_id="bench", body=body, now=0))
            for _ in range(count)
        ]
        await collection.insert_many(documents)
    finally:
        await mongo.close()


async def bench_client_id(mongo_url: str, db: str) -> str | None:
    """The client id of the bench's cases (the only client that creates cases in a bench stack)."""
    mongo = setup_client(mongo_url)
    try:
        document = await mongo[db]["cases"].find_one({}, {"clientId": 1})
        return str(document["clientId"]) if document else None
    finally:
        await mongo.close()


def list_case_ids(target: Target, *, limit: int) -> list[str]:
    """Up to `limit` of the bench client's case ids, through the API itself (works against BENCH_URL too)."""
    ids: list[str] = []
    cursor: str | None = None
    with httpx.Client(base_url=target.gateway_url, headers=target.headers, timeout=30) as client:
        while len(ids) < limit:
            params: dict[str, str | int] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/cases", params=params).raise_for_status().json()["data"]
            ids += [item["caseId"] for item in page["items"]]
            cursor = page.get("nextCursor")
            if not cursor:
                break
    return ids[:limit]


async def prepare_input_cases(target: Target, case_ids: Sequence[str]) -> int:
    """Put settled cases in INPUT_NEEDED with a pending input request, as the worker would have: each case read
    and written back as a `CaseRecord` through the case service's own store (a versioned replace), not through
    the lifecycle, which would need a counterparty per case to get there."""
    assert target.mongo_url is not None
    mongo = setup_client(target.mongo_url)
    store = CaseStore(mongo[target.mongo_db])
    modified = 0
    try:
        now = now_ms()
        for case_id in case_ids:
            record = await store.get(case_id)
            if record is None or record.status != "RUNNING" or record.awaiting_send is not None:
                continue
            waiting = msgspec.structs.replace(
                record,
                status="INPUT_NEEDED",
                next_action_at=NOTHING_SCHEDULED,
                input_request=InputRequestRecord(
                    id=INPUT_REQUEST_ID,
                    question="Which vendor id should I give them?",
                    status="PENDING",
                    requested_at=now,
                ),
                updated_at=now,
                version=record.version + 1,
            )
            modified += await store.replace(waiting, expected_version=record.version)
        return modified
    finally:
        await mongo.close()


async def pending_input_case_ids(target: Target) -> list[str]:
    assert target.mongo_url is not None
    mongo = setup_client(target.mongo_url)
    try:
        cursor = mongo[target.mongo_db]["cases"].find(
            {"status": "INPUT_NEEDED", "inputRequest.id": INPUT_REQUEST_ID, "inputRequest.status": "PENDING"},
            {"_id": 1},
        )
        return [str(document["_id"]) for document in await cursor.to_list(None)]
    finally:
        await mongo.close()


def worker_scenario(runner: Runner) -> Scenario:
    """N cases from create to first email, measured through the simulator's outbox."""
    from bench.worker import run_worker

    target, config = runner.target, runner.config
    assert target.simulator_url is not None
    tag = f"w{runner.run_tag}"
    bodies: list[dict[str, object]] = [new_case_body(f"{tag}-{i}") for i in range(config.worker_cases)]
    holder: dict[str, Any] = {}

    def action() -> LoadResult:
        run = asyncio.run(
            run_worker(
                gateway_url=target.gateway_url,
                simulator_url=target.simulator_url or "",
                headers=target.headers,
                bodies=bodies,
                tag=tag,
                concurrency=config.worker_concurrency,
                timeout_s=config.worker_timeout_s,
            )
        )
        holder["run"] = run
        return run.emails

    phase = runner.measure("run", f"{config.worker_cases:,} cases", action, accounted=target.stack_processes)
    run = holder["run"]
    scenario = Scenario(
        name=f"worker: {config.worker_cases:,} cases → first email",
        group="worker",
        description="Create N cases (silent counterparties) as fast as the API takes them, then wait for each "
        "first email in the simulator's outbox. ok/s = emails per second from the first create to the last "
        "email; latencies = per case, create request → email timestamp.",
        baseline="baseline: MongoDB insert_one",
        phases=[phase],
        context={
            "cases": config.worker_cases,
            "created": run.created.ok,
            "emails_sent": run.sent,
            "elapsed_s": run.elapsed_s,
            "create_phase": msgspec.to_builtins(run.created),
            "create_concurrency": config.worker_concurrency,
        },
        notes=["CPU per request here is per case (its create, first email and the delivery webhook it causes)."],
    )
    base = runner.scenarios.get("baseline: MongoDB insert_one")
    saturated = base.phase("saturation") if base else None
    if saturated is not None:
        scenario.ratios = {"throughput_run": ratio(saturated.load.throughput_rps, phase.load.throughput_rps)}
    runner.scenarios[scenario.name] = scenario
    scenario.context["quiet_wait_s"] = runner.wait_quiet()
    return scenario


def profile(runner: Runner, ids_file: Path, output_dir: Path) -> list[ProfileSummary]:
    """py-spy on the gateway and the case service during a GET /cases/{id} saturation run."""
    from bench.profiling import profile_processes

    target, config = runner.target, runner.config
    pids = {name: pid for name, pid in (("gateway", target.gateway_pid), ("case", target.case_pid)) if pid}
    phase = runner.http(target.gateway_url, "GET", "/cases/{id}", headers=target.headers, ids_file=ids_file)(
        "vus", config.profile_s + 2, f"profile-{runner.run_tag}"
    )
    return profile_processes(
        pids=pids,
        seconds=config.profile_s,
        output_dir=output_dir,
        label="get-case",
        load=f"GET /cases/{{id}}, {config.vus} VUs",
        drive=lambda: run_phase(phase),
    )

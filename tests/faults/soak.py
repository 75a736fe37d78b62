"""The chaos soak (`make soak`; a shorter run in `make test-faults`): hundreds of cases over every scripted
counterparty and both agent backends while a seeded schedule kills, restarts and breaks what they depend on;
then checks from outside that no case is stuck, doubled or lost.

    python -m tests.faults.soak --seed 1414 --cases 300      # the seed is printed; it replays the schedule

The stack is the fault tests' (tests/faults/conftest.py): its own NATS, its own SQLite-backed MongoDB (restarts
keep the data), the simulator and every service as real processes, plus a second case-service replica on
`AGENT_BACKEND=openai` against the fake model. The one design decision: time is compressed through settings
(follow-up hours of 3 s, a consumer retry budget of seconds, short webhook schedules and leases), never by
sleeping, so that an outage "longer than the whole retry budget" takes seconds and a run takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx
import nats
from nats.js.errors import NotFoundError
from pymongo import AsyncMongoClient

from deploy.processes import EmbeddedMongo, ManagedProcess, NatsServer, Stack
from shared.clock import now_ms
from shared.contracts.case import CMD_CREATED
from shared.subjects import CASE_COMMANDS, PARKED
from simulator.cases import case_body
from tests.faults.soak_checks import (
    TERMINAL,
    TERMINAL_EVENT,
    UNMATCHED_COLLECTION,
    CheckResult,
    CreateAnswer,
    CreateRecord,
    Observed,
    run_checks,
)
from tests.faults.soak_plan import Fault, PlannedCase, SoakConfig, SoakPlan, plan, short_config
from tests.support.api import new_client
from tests.support.fake_openai import ChatCall, FakeOpenAI, Reply, rules_model
from tests.support.receivers import Receiver

type Json = dict[str, Any]

MONGO_DB: Final = "caseflow_soak"
OPENAI_TIMEOUT_SECONDS: Final = 3.0
AGENTMAIL_TIMEOUT_SECONDS: Final = 1.0
SOAK_ADDRESS: Final = re.compile(r"[a-z]+\.s\d+n\d+@sim\.example")
# A client's pool of concurrent creates (300 independent retry loops at once would only measure the storm).
CREATE_CONCURRENCY: Final = 8
# How long the final reads retry a 5xx or no answer (the stack may still be catching up after the faults).
READ_PATIENCE_SECONDS: Final = 60.0


def stack_settings(config: SoakConfig) -> dict[str, str]:
    """The compressed clock of the run; each value says which wait it shortens."""
    return {
        "MONGO_DB": MONGO_DB,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "RATE_LIMIT_CREATE": "10000/10000",
        "RATE_LIMIT_DEFAULT": "10000/10000",
        # A follow-up "hour" is 3 s: a silent counterparty's case fails max_retries seconds after its 2nd email.
        "FOLLOW_UP_HOUR_SECONDS": "3",
        "SCHEDULER_INTERVAL_SECONDS": "0.5",
        # Today's whole consumer retry budget is a few seconds (soak_plan.SoakConfig.retry_budget_seconds).
        "CONSUMER_BACKOFF_SECONDS": ",".join(str(s) for s in config.consumer_backoff_seconds),
        "CONSUMER_MAX_DELIVER": str(config.consumer_max_deliver),
        # Transient failures back off to a few seconds at most, so an outage's end is noticed within the run.
        "CONSUMER_BACKOFF_CAP_SECONDS": "4",
        # The reconciler's leases, compressed: a step whose message never comes is requested again within seconds.
        "SEND_LEASE_SECONDS": "20",
        "INPUT_LEASE_SECONDS": "15",
        "REPLY_LEASE_SECONDS": "15",
        "CREATE_CONFIRM_GRACE_SECONDS": "15",
        "OPENAI_PROBE_RETRY_SECONDS": "2",
        "AGENTMAIL_TIMEOUT_SECONDS": str(AGENTMAIL_TIMEOUT_SECONDS),
        "AGENTMAIL_MAX_RETRIES": "2",
        "AGENTMAIL_RETRY_BASE_SECONDS": "0.2",
        "AGENTMAIL_RETRY_MAX_SECONDS": "1",
        "SEND_TIMEOUT_SECONDS": "8",
        # The default: shorter, a loaded two-core machine times out healthy requests and its retries pile up.
        "RPC_TIMEOUT_SECONDS": "5",
        "MONGO_TIMEOUT_SECONDS": "2",
        # A stopped process finishes its in-flight work quickly (teardown of ten processes stays short).
        "SHUTDOWN_GRACE_SECONDS": "2",
        "WEBHOOK_RETRY_SCHEDULE_SECONDS": "0,0.5,1,2,4,8,8,8",
        "WEBHOOK_CLAIM_LEASE_SECONDS": "3",
        "WEBHOOK_POLL_SECONDS": "0.2",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_ACK_WAIT_SECONDS": "5",
        # The simulator redelivers its webhooks for about four minutes (AgentMail, through Svix, for days).
        "AGENTMAIL_SIM_WEBHOOK_RETRY_SECONDS": "0.5,1,2,4,8,15,30,30,30,30,30,30",
        "OPENAI_API_KEY": "sk-soak-openai-key-do-not-log",
        "OPENAI_MODEL": "fake-rules-model",
        "OPENAI_TIMEOUT_SECONDS": str(OPENAI_TIMEOUT_SECONDS),
        "OPENAI_MAX_RETRIES": "1",
        "OPENAI_RETRY_BASE_SECONDS": "0.1",
        "OPENAI_RETRY_MAX_SECONDS": "0.5",
    }


@dataclass(slots=True)
class Injected:
    fault: Fault
    started_seconds: float
    ended_seconds: float | None = None
    note: str = ""


@dataclass(slots=True)
class SoakStack:
    """NATS, MongoDB, simulator, the six services, a second case service on the openai backend, the fake model
    (whose outages the soak switches on and off) and the client's webhook receiver."""

    work: Path
    config: SoakConfig
    nats: NatsServer = field(init=False)
    mongo: EmbeddedMongo = field(init=False)
    stack: Stack = field(init=False)
    model: FakeOpenAI = field(init=False)
    receiver: Receiver = field(init=False)
    processes: dict[str, ManagedProcess] = field(init=False)
    model_outage: str | None = None

    def __post_init__(self) -> None:
        self.nats = NatsServer(log_dir=self.work, store_dir=self.work / "jetstream")
        (self.work / "mongo").mkdir(exist_ok=True)
        self.mongo = EmbeddedMongo(log_dir=self.work, sqlite_path=self.work / "mongo" / "caseflow.sqlite")
        self.model = FakeOpenAI(model=self._model)
        self.receiver = Receiver()

    async def _model(self, call: ChatCall) -> Reply:
        outage = self.model_outage
        if outage == "5xx":
            return Reply(status=503, content='{"error": {"message": "overloaded"}}', headers={"retry-after": "0"})
        answer = await rules_model(call)
        if outage == "timeout":
            return replace(answer, delay_seconds=OPENAI_TIMEOUT_SECONDS + 1.0)
        return answer

    def start(self) -> None:
        self.nats.start()
        self.mongo.start()
        self.model.__enter__()
        self.receiver.__enter__()
        self.stack = Stack(log_dir=self.work, nats=self.nats, mongo_url=self.mongo.url, env=stack_settings(self.config))
        openai = ManagedProcess(
            "case_openai",
            [sys.executable, "-m", "services.case"],
            env={**self.stack.env, "AGENT_BACKEND": "openai", "OPENAI_BASE_URL": f"{self.model.url}/v1"},
            log_dir=self.work,
        )
        self.processes = {**self.stack.services, "case_openai": openai}
        self.stack.start()
        openai.start()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        self.stack.simulator.stop()
        self.receiver.__exit__()
        self.model.__exit__()
        self.mongo.stop()
        self.nats.stop()


class Soak:
    def __init__(self, soak_plan: SoakPlan, stack: SoakStack) -> None:
        self.plan = soak_plan
        self.stack = stack
        self.seed = soak_plan.config.seed
        self.injected: list[Injected] = []
        self.creates = [CreateRecord(planned) for planned in soak_plan.cases]
        self.answered_inputs: Counter[str] = Counter()
        self.poison_markers: list[str] = []
        self.started = time.monotonic()
        self.client: Json = {}
        self.settle_seconds = 0.0
        # The client's connection pool: at most this many creates in flight, however many are due or retrying.
        self.create_slots = asyncio.Semaphore(CREATE_CONCURRENCY)
        self.api: httpx.AsyncClient | None = None  # the client of the run, once it started

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    async def _at(self, offset_seconds: float) -> None:
        await asyncio.sleep(max(0.0, self.started + offset_seconds - time.monotonic()))

    # ---- traffic ------------------------------------------------------------------------------------------

    def _body(self, planned: PlannedCase) -> Json:
        return case_body(
            clientReferenceId=planned.idempotency_key,
            counterparty={"address": planned.address, "name": planned.behaviour.capitalize()},
            followUpDelayHours=planned.follow_up_delay_hours,
            maxAttempts=planned.max_attempts,
            clientWebhookUrl=self.stack.receiver.url("/hook"),
            metadata={"soakSeed": str(self.seed), "behaviour": planned.behaviour},
        )

    async def create(self, api: httpx.AsyncClient, record: CreateRecord, give_up_at: float) -> None:
        """POST /cases with the case's Idempotency-Key, retried with the same key on 5xx, no answer, 409 (the
        first try still in flight) and 429, until a 201; every answer recorded."""
        await self._at(record.planned.create_at_seconds)
        body = self._body(record.planned)
        delay = 0.5
        while time.monotonic() < give_up_at:
            retry_after = 0.0
            try:
                async with self.create_slots:
                    response = await api.post(
                        "/cases", json=body, headers={"Idempotency-Key": record.planned.idempotency_key}
                    )
            except httpx.HTTPError:
                record.answers.append(CreateAnswer(self.elapsed(), None))
            else:
                envelope = _json(response)
                data = envelope.get("data") or {}
                error = envelope.get("error") or {}
                record.answers.append(
                    CreateAnswer(
                        self.elapsed(),
                        response.status_code,
                        code=error.get("code"),
                        case_id=data.get("caseId"),
                        replayed=response.headers.get("idempotent-replayed") == "true",
                    )
                )
                if response.status_code == 201:
                    return
                if response.status_code < 500 and response.status_code not in {409, 429}:
                    return  # a 4xx the client must not retry: the check reports it
                retry_after = _seconds(response.headers.get("retry-after"))
            # A well-behaved client: exponential backoff, never sooner than the gateway's Retry-After.
            await asyncio.sleep(max(delay, retry_after))
            delay = min(delay * 1.5, 5.0)

    async def answer_inputs(self, api: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Play the client: answer every PENDING input request (the `ask` counterparty's question)."""
        answered: set[str] = set()
        while not stop.is_set():
            try:
                for case in await list_cases(api, status="INPUT_NEEDED"):
                    request = case.get("inputRequest") or {}
                    if request.get("status") != "PENDING" or request["id"] in answered:
                        continue
                    response = await api.post(
                        f"/cases/{case['caseId']}/input",
                        json={
                            "inputRequestId": request["id"],
                            "providedContext": "A PDF signed electronically is fine; no wet-ink signature needed.",
                        },
                    )
                    if response.status_code == 202:
                        answered.add(request["id"])
                        self.answered_inputs[case["caseId"]] += 1
            except (httpx.HTTPError, ReadFailed, KeyError):
                pass  # the gateway or a service is down right now; the next round asks again
            await asyncio.sleep(1.0)

    # ---- faults -------------------------------------------------------------------------------------------

    async def run_lane(self, faults: list[Fault], run: Callable[[Fault], Awaitable[str]]) -> None:
        for fault in faults:
            await self._at(fault.at_seconds)
            entry = Injected(fault, self.elapsed())
            self.injected.append(entry)
            try:
                entry.note = await run(fault)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                entry.note = f"not injected: {exc!r}"
            entry.ended_seconds = self.elapsed()

    async def process_fault(self, fault: Fault) -> str:
        if fault.kind == "kill":
            process = self.stack.processes[fault.target]
            code = await asyncio.to_thread(process.kill)
            await asyncio.sleep(fault.duration_seconds)
            await asyncio.to_thread(process.start)
            return f"exit {code}"
        component: ManagedProcess = self.stack.nats if fault.kind == "restart_nats" else self.stack.mongo
        await asyncio.to_thread(component.stop)
        await asyncio.sleep(fault.duration_seconds)
        await asyncio.to_thread(component.start)
        return "stopped, started"

    async def agentmail_fault(self, fault: Fault) -> str:
        specs: list[Json]
        match fault.kind:
            case "agentmail_5xx":
                specs = [{"operation": "*", "status": random.Random(fault.at_seconds).choice([500, 502, 503])}]
            case "agentmail_timeout":
                # The provider does the work but answers after the adapter gave up: only the key prevents a double.
                latency = AGENTMAIL_TIMEOUT_SECONDS + 1.0
                specs = [{"operation": op, "latency_seconds": latency} for op in ("send", "reply")]
            case "agentmail_429":
                specs = [{"operation": "*", "status": 429, "retry_after": 0.5}]
            case "agentmail_422":
                specs = [{"operation": "send", "status": 422, "code": "unprocessable"}]
            case _:  # the outage longer than the whole retry budget
                specs = [{"operation": "*", "status": 503}]
        async with httpx.AsyncClient(base_url=f"{self.stack.stack.simulator.url}/_sim", timeout=10) as sim:
            for spec in specs:
                (await sim.post("/faults", json={**spec, "count": 1_000_000})).raise_for_status()
            await asyncio.sleep(fault.duration_seconds)
            (await sim.delete("/faults")).raise_for_status()
        return json.dumps(specs)

    async def model_fault(self, fault: Fault) -> str:
        self.stack.model_outage = "5xx" if fault.kind == "model_5xx" else "timeout"
        await asyncio.sleep(fault.duration_seconds)
        self.stack.model_outage = None
        return "503 to every call" if fault.kind == "model_5xx" else f"answers after {OPENAI_TIMEOUT_SECONDS + 1} s"

    async def instant_fault(self, fault: Fault) -> str:
        if fault.kind == "poison":
            return await self.publish_poison(fault)
        return await self.inject_stray(fault)

    async def publish_poison(self, fault: Fault) -> str:
        """A created command that can never be handled (not a CaseCreated at all): it must be parked, and it
        must be the only kind of thing parked."""
        marker = f"soak-poison-{self.seed}-{fault.target}"
        self.poison_markers.append(marker)
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = await nats.connect(self.stack.nats.url, connect_timeout=2, max_reconnect_attempts=0)
                try:
                    js = connection.jetstream()
                    body = json.dumps({"soakPoison": marker}).encode()
                    await js.publish(CMD_CREATED, body, stream=CASE_COMMANDS.name, headers={"Nats-Msg-Id": marker})
                finally:
                    await connection.close()
                return f"{marker} on {CMD_CREATED}"
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)  # NATS is being restarted by the process lane

    async def inject_stray(self, fault: Fault) -> str:
        """An inbound email that answers no thread: from a stranger, or a fresh email from the counterparty of a
        case that ended well before (it matches no open case). Either way it must not be discarded."""
        sender = f"stranger.s{self.seed}@elsewhere.example"
        if fault.target == "counterparty":
            sender = f"refuse.s{self.seed}nobody@sim.example"  # when no refused case has ended yet
            for record in reversed(self.creates):
                if record.planned.behaviour != "refuse" or record.case_id is None:
                    continue
                # Only a case that has ended: a fresh email to an open case is a reply and would change it.
                assert self.api is not None
                try:
                    case = await get_data(self.api, f"/cases/{record.case_id}", patience_seconds=5)
                except ReadFailed:
                    continue  # the stack is busy or down right now: try an earlier case
                if case.get("status") in TERMINAL:
                    sender = record.planned.address
                    break
        async with httpx.AsyncClient(base_url=f"{self.stack.stack.simulator.url}/_sim", timeout=10) as sim:
            response = await sim.post(
                "/inbound",
                json={"from": sender, "subject": "A question", "text": f"Hello, who is this? ({fault.target})"},
            )
            response.raise_for_status()
        return f"from {sender}: {response.json()['message']['message_id']}"

    # ---- the run ------------------------------------------------------------------------------------------

    async def settled(self, api: httpx.AsyncClient) -> bool:
        """Every answered case terminal and its terminal webhook received (then nothing more is coming)."""
        wanted = {r.case_id for r in self.creates if r.case_id}
        if len(wanted) < len(self.creates):
            return False
        try:
            cases = {c["caseId"]: c for c in await list_cases(api)}
        except (ReadFailed, KeyError):
            return False
        received = {_webhook_key(body) for _, body in self.received()}
        return all(
            case_id in cases
            and cases[case_id]["status"] in TERMINAL
            and (case_id, TERMINAL_EVENT[cases[case_id]["status"]]) in received
            for case_id in wanted
        )

    def received(self) -> list[tuple[dict[str, str], bytes]]:
        return [(hook.headers, hook.body) for hook in self.stack.receiver.received]

    async def run(self) -> tuple[list[CheckResult], Observed]:
        config = self.plan.config
        self.client = await asyncio.to_thread(new_client, self.stack.stack)
        headers = {"x-api-key": self.client["apiKey"]}
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(
            base_url=self.stack.stack.gateway_url, headers=headers, timeout=10, limits=limits
        ) as api:
            self.api = api
            self.started = time.monotonic()
            stop_inputs = asyncio.Event()
            give_up_at = self.started + config.fault_phase_seconds + config.settle_seconds * 0.5
            traffic = [asyncio.create_task(self.create(api, record, give_up_at)) for record in self.creates]
            inputs = asyncio.create_task(self.answer_inputs(api, stop_inputs))
            faults = self.plan.faults
            lanes = [
                self.run_lane(
                    [f for f in faults if f.kind in {"kill", "restart_nats", "restart_mongodb"}], self.process_fault
                ),
                self.run_lane([f for f in faults if f.kind.startswith("agentmail")], self.agentmail_fault),
                self.run_lane([f for f in faults if f.kind.startswith("model")], self.model_fault),
                *(self.run_lane([f], self.instant_fault) for f in faults if f.kind in {"poison", "stray_inbound"}),
            ]
            await asyncio.gather(*lanes)
            await self.recover()
            settle_until = time.monotonic() + config.settle_seconds
            # Polling the stack from outside, as a client would: there is no event to wait on.
            while time.monotonic() < settle_until and not await self.settled(api):  # noqa: ASYNC110
                await asyncio.sleep(2.0)
            # The poison is parked after CONSUMER_MAX_DELIVER failures with the consumer's backoff between them,
            # which can end after the cases settle: waited for within the same bound.
            while time.monotonic() < settle_until and not await self.poison_parked():  # noqa: ASYNC110
                await asyncio.sleep(2.0)
            self.settle_seconds = self.elapsed()
            stop_inputs.set()
            await inputs
            for task in traffic:
                task.cancel()
            await asyncio.gather(*traffic, return_exceptions=True)
            observed = await self.observe(api)
        return run_checks(observed), observed

    async def poison_parked(self) -> bool:
        parked = await read_parked(self.stack.nats.url)
        return all(any(marker.encode() in body for _, body in parked) for marker in self.poison_markers)

    async def recover(self) -> None:
        """After the schedule: every fault lifted, every process up (one that died on its own is noted)."""
        self.stack.model_outage = None
        async with httpx.AsyncClient(timeout=10) as http:
            await http.delete(f"{self.stack.stack.simulator.url}/_sim/faults")
        for name, process in [*self.stack.processes.items(), ("nats", self.stack.nats), ("mongodb", self.stack.mongo)]:
            if not process.running:
                self.injected.append(
                    Injected(
                        Fault("kill", self.elapsed(), 0.0, name),
                        self.elapsed(),
                        self.elapsed(),
                        "found dead after the schedule; restarted",
                    )
                )
                await asyncio.to_thread(process.start)
        await asyncio.to_thread(self.stack.stack.wait_ready, timeout=90)

    async def quiet(self, seconds: float = 5.0, *, at_most: float = 30.0) -> None:
        """Wait until the webhook receiver has heard nothing new for `seconds` (a late status change's webhook
        is still on its way), at most `at_most` seconds."""
        deadline = time.monotonic() + at_most
        count, since = len(self.stack.receiver.received), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < seconds:
            await asyncio.sleep(0.5)
            if len(self.stack.receiver.received) != count:
                count, since = len(self.stack.receiver.received), time.monotonic()

    async def observe(self, api: httpx.AsyncClient) -> Observed:
        await self.quiet()
        # GET /cases finds every case of the client (ghosts too); GET /cases/{id} is the state checked.
        cases: list[Json] = []
        transcripts: dict[str, list[Json]] = {}
        webhook_logs: dict[str, list[Json]] = {}
        unreadable: list[str] = []
        try:
            every_case = await list_cases(api, patience_seconds=READ_PATIENCE_SECONDS)
        except ReadFailed as exc:
            # Without the list, ghosts are invisible; still read every case the client was given.
            unreadable = [f"{exc} (ghost cases unknown)"]
            every_case = [{"caseId": r.case_id} for r in self.creates if r.case_id]
        for listed in every_case:
            case_id = listed["caseId"]
            try:
                case = await get_data(
                    api, f"/cases/{case_id}", {"includeTranscript": "true"}, patience_seconds=READ_PATIENCE_SECONDS
                )
                logged = await get_data(
                    api, f"/cases/{case_id}/webhook-deliveries", patience_seconds=READ_PATIENCE_SECONDS
                )
            except ReadFailed as exc:
                unreadable.append(str(exc))
                if "status" not in listed:
                    continue  # neither listed nor readable: the outcome check reports it as missing
                case, logged = listed, {}
            cases.append(case)
            transcripts[case_id] = list(case.get("conversationMessages") or [])
            webhook_logs[case_id] = list(logged.get("items") or [])
        received = self.received()
        # A case that changed while it was being read has a newer webhook than its state: read it again.
        changed_since = {_webhook_key(body)[0] for _, body in received} - {
            c["caseId"] for c in cases if c["status"] in TERMINAL
        }
        for index, case in enumerate(cases):
            if case["caseId"] in changed_since:
                try:
                    cases[index] = await get_data(api, f"/cases/{case['caseId']}", {"includeTranscript": "true"})
                except ReadFailed as exc:
                    unreadable.append(str(exc))
                    continue
                # The transcript of the same read: the reply that changed the case is in it, not in the first.
                transcripts[case["caseId"]] = list(cases[index].get("conversationMessages") or [])
        simulator = self.stack.stack.simulator.url
        async with httpx.AsyncClient(base_url=f"{simulator}/_sim", timeout=30) as sim:
            outbox = (await sim.get("/outbox", params={"to": f".s{self.seed}n"})).json()["messages"]
            calls = (await sim.get("/calls")).json()
            deliveries = (await sim.get("/webhook-deliveries")).json()
        inbound: dict[str, Json] = {}
        for delivery in deliveries:
            if delivery["event_type"] == "message.received":
                message = json.loads(delivery["body"])["message"]
                accepted = inbound.get(message["message_id"], {}).get("accepted", False) or delivery["delivered"]
                # Whether our ingress ever acknowledged it (2xx): if not, the simulator gave up redelivering.
                inbound[message["message_id"]] = {**message, "accepted": accepted}
        mongo: AsyncMongoClient[Json] = AsyncMongoClient(self.stack.mongo.url)
        try:
            db = mongo[MONGO_DB]
            sent_records = [r async for r in db["messages"].find({"direction": "outbound"})]
            names = await db.list_collection_names()
            unmatched = [d async for d in db[UNMATCHED_COLLECTION].find({})] if UNMATCHED_COLLECTION in names else None
        finally:
            await mongo.close()
        model_calls: Counter[str] = Counter()
        for call in self.stack.model.calls:
            for address in set(SOAK_ADDRESS.findall(json.dumps(call.body))):
                model_calls[address] += 1
        return Observed(
            now_ms=now_ms(),
            creates=self.creates,
            cases=cases,
            transcripts=transcripts,
            webhook_logs=webhook_logs,
            received_webhooks=received,
            webhook_secret=str(self.client["webhookSecret"]),
            outbox=outbox,
            provider_calls=calls,
            inbound=list(inbound.values()),
            sent_records=sent_records,
            unmatched=unmatched,
            parked=await read_parked(self.stack.nats.url),
            poison_markers=self.poison_markers,
            answered_inputs=dict(self.answered_inputs),
            model_calls_by_address=dict(model_calls),
            unreadable=unreadable,
        )


class ReadFailed(Exception):
    """A read from outside got no 2xx within its patience."""


async def get_data(
    api: httpx.AsyncClient, path: str, params: dict[str, str | int] | None = None, *, patience_seconds: float = 0.0
) -> Json:
    """The `data` of a GET, retried like a client would on 5xx and no answer for `patience_seconds`."""
    deadline = time.monotonic() + patience_seconds
    last = "no answer"
    while True:
        try:
            response = await api.get(path, params=params)
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if response.is_success:
                data = _json(response).get("data")
                return data if isinstance(data, dict) else {}
            last = f"{response.status_code} {response.text[:200]}"
            if response.status_code < 500:
                raise ReadFailed(f"GET {path}: {last}")
        if time.monotonic() >= deadline:
            raise ReadFailed(f"GET {path}: {last}")
        await asyncio.sleep(1.0)


async def list_cases(api: httpx.AsyncClient, *, status: str | None = None, patience_seconds: float = 0.0) -> list[Json]:
    """Every case of the soak client (GET /cases, all pages)."""
    items: list[Json] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        data = await get_data(api, "/cases", params, patience_seconds=patience_seconds)
        items += data["items"]
        cursor = data["nextCursor"]
        if not cursor:
            # A change feed may list a case twice (it changed while paging): keep its newest state.
            return list({item["caseId"]: item for item in items}.values())


async def read_parked(nats_url: str) -> list[tuple[str, bytes]]:
    connection = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = connection.jetstream()
        try:
            state = (await js.stream_info(PARKED.name)).state
        except NotFoundError:
            return []
        parked = []
        for sequence in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            try:
                message = await js.get_msg(PARKED.name, sequence)
            except NotFoundError:
                continue
            subject = (message.headers or {}).get("Caseflow-Parked-Subject", message.subject or "")
            parked.append((subject, message.data or b""))
        return parked
    finally:
        await connection.close()


def _json(response: httpx.Response) -> Json:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(header: str | None) -> float:
    try:
        return float(header) if header else 0.0
    except ValueError:
        return 0.0


def _webhook_key(body: bytes) -> tuple[str, str]:
    try:
        event = json.loads(body)
        return str(event["data"]["caseId"]), str(event["event_type"])
    except (ValueError, KeyError, TypeError):
        return "", ""


# ---- the report -------------------------------------------------------------------------------------------


def report(soak: Soak, checks: list[CheckResult], observed: Observed) -> str:
    config = soak.plan.config
    lines = [
        f"Caseflow chaos soak: seed {config.seed}, {config.cases} cases, "
        f"fault phase {config.fault_phase_seconds:.0f} s, settled after {soak.settle_seconds:.0f} s",
        f"retry budget {config.retry_budget_seconds:.1f} s (CONSUMER_BACKOFF_SECONDS summed over "
        f"CONSUMER_MAX_DELIVER={config.consumer_max_deliver}); AgentMail outage {config.outage_seconds:.1f} s",
        "",
        "Case mix: " + ", ".join(f"{b} {n}" for b, n in sorted(Counter(c.behaviour for c in soak.plan.cases).items())),
        "",
        f"{'injected':<28}{'count':>6}  at seconds (duration)",
    ]
    by_label: dict[str, list[Injected]] = {}
    for entry in soak.injected:
        by_label.setdefault(entry.fault.label, []).append(entry)
    for label, entries in sorted(by_label.items()):
        times = ", ".join(
            f"{e.started_seconds:.0f}"
            + (f" ({e.fault.duration_seconds:g}s)" if e.fault.duration_seconds else "")
            + (f" NOT INJECTED ({e.note})" if e.note.startswith("not injected") else "")
            for e in entries
        )
        lines.append(f"  {label:<26}{len(entries):>6}  {times}")
    answers = Counter("no answer" if a.status is None else str(a.status) for r in observed.creates for a in r.answers)
    lines += [
        "",
        "create answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())),
        f"inputs answered: {sum(observed.answered_inputs.values())}; emails sent: {len(observed.outbox)}; "
        f"inbound: {len(observed.inbound)}; webhooks received: {len(observed.received_webhooks)}; "
        f"parked: {len(observed.parked)}",
        "",
        f"{'checked':<50}{'result':<8}counts",
    ]
    for check in checks:
        lines.append(f"  {check.name:<48}{'PASS' if check.passed else 'FAIL':<8}{check.counts}")
        lines += [f"      - {failure}" for failure in check.failures]
    failed = [check.name for check in checks if not check.passed]
    lines.append("")
    lines.append(
        f"FAILED {len(failed)} of {len(checks)} checks; reproduce with: python -m tests.faults.soak --seed "
        f"{config.seed} --cases {config.cases}" + (" --short" if config.preset == "short" else "")
        if failed
        else f"all {len(checks)} checks passed (seed {config.seed})"
    )
    return "\n".join(lines)


async def run_soak(config: SoakConfig, work: Path) -> tuple[list[CheckResult], str]:
    """Start the stack, run the seeded schedule, check, stop everything; returns the checks and the report."""
    soak_plan = plan(config)
    stack = SoakStack(work=work, config=config)
    try:
        await asyncio.to_thread(stack.start)
        soak = Soak(soak_plan, stack)
        checks, observed = await soak.run()
        return checks, report(soak, checks, observed)
    finally:
        await asyncio.to_thread(stack.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replays a schedule and case mix (default: random)")
    parser.add_argument("--cases", type=int, default=None, help="cases to create (default 300; --short: 60)")
    parser.add_argument("--short", action="store_true", help="the shorter run of `make test-faults`")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    config = short_config(seed) if args.short else SoakConfig(seed=seed)
    if args.cases is not None:
        config = replace(config, cases=args.cases)
    work = Path(tempfile.mkdtemp(prefix=f"caseflow-soak-{seed}-"))
    print(f"chaos soak: seed {seed}, {config.cases} cases; logs in {work}", flush=True)
    checks, text = asyncio.run(run_soak(config, work))
    print(text, flush=True)
    return 0 if all(check.passed for check in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The chaos soak's plan: which cases it creates and which faults it injects when, all drawn from one seed.

Pure: nothing here touches a process. The one design decision: faults run in three lanes (processes, AgentMail,
the model), and inside a lane they never overlap, so each fault has a clear start and end in the printed table
and a seed replays the same schedule (the same faults, at the same offsets, on the same targets, over the same
case mix). What the real processes then do in between is not deterministic; the seed reproduces the pressure,
not the interleaving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

# Every scripted counterparty of the simulator (docs/agentmail.md), by the prefix of its address.
BEHAVIOURS: Final = ("agree", "ask", "chat", "refuse", "silent", "bounce", "complain", "reject")

# Processes the soak kills with SIGKILL: the six services, and the second case-service replica (openai backend).
KILLABLE: Final = ("auth", "billing", "case", "case_openai", "agentmail_adapter", "webhook", "gateway")

type FaultKind = Literal[
    "kill",
    "restart_nats",
    "restart_mongodb",
    "agentmail_5xx",
    "agentmail_timeout",
    "agentmail_429",
    "agentmail_422",
    "agentmail_outage",
    "model_5xx",
    "model_timeout",
    "poison",
    "stray_inbound",
]

AGENTMAIL_WINDOWS: Final[tuple[FaultKind, ...]] = (
    "agentmail_5xx",
    "agentmail_timeout",
    "agentmail_429",
    "agentmail_422",
)
MODEL_WINDOWS: Final[tuple[FaultKind, ...]] = ("model_5xx", "model_timeout")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    at_seconds: float  # offset from the start of the fault phase
    duration_seconds: float  # how long the process stays down / the window stays open; 0 for instant faults
    target: str = ""  # the killed process; the stray kind ("stranger" or "counterparty")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.target}" if self.kind == "kill" else self.kind


@dataclass(frozen=True, slots=True)
class PlannedCase:
    index: int
    behaviour: str
    # The soak client answers input requests and checks outcomes by behaviour; the address names the case.
    address: str
    idempotency_key: str
    create_at_seconds: float
    follow_up_delay_hours: int
    max_attempts: int


@dataclass(frozen=True, slots=True)
class SoakConfig:
    seed: int
    preset: Literal["full", "short"] = "full"
    cases: int = 300
    # About one create a second (the rate of the short run): faster, two shared cores fall behind for good.
    fault_phase_seconds: float = 360.0
    settle_seconds: float = 180.0
    kills_per_process: int = 2
    nats_restarts: int = 2
    mongodb_restarts: int = 2
    agentmail_windows_per_kind: int = 2
    agentmail_outages: int = 1
    model_windows_per_kind: int = 2
    poison_messages: int = 3
    stray_inbound: int = 4
    # The consumer retry budget the stack runs with (compressed: seconds, not ~15 minutes).
    consumer_backoff_seconds: tuple[float, ...] = (0.2, 0.5, 1.0)
    consumer_max_deliver: int = 8

    @property
    def retry_budget_seconds(self) -> float:
        """Today's whole retry budget: the redelivery delays summed over CONSUMER_MAX_DELIVER deliveries (the
        last backoff repeats, as shared/messaging/middleware.RetryPolicy does)."""
        backoff = self.consumer_backoff_seconds
        return sum(backoff[min(i, len(backoff) - 1)] for i in range(self.consumer_max_deliver))

    @property
    def outage_seconds(self) -> float:
        """An AgentMail outage clearly longer than the whole retry budget."""
        return round(max(2 * self.retry_budget_seconds, self.retry_budget_seconds + 5.0), 1)


def short_config(seed: int) -> SoakConfig:
    """The run inside `make test-faults`: 60 cases, each fault kind at least once, a few minutes."""
    return SoakConfig(
        seed=seed,
        preset="short",
        cases=60,
        fault_phase_seconds=75.0,
        # A bound, not a wait (the run ends once every case settled): a loaded two-core CI machine needs it.
        settle_seconds=150.0,
        kills_per_process=1,
        nats_restarts=1,
        mongodb_restarts=1,
        agentmail_windows_per_kind=1,
        agentmail_outages=1,
        model_windows_per_kind=1,
        poison_messages=2,
        stray_inbound=2,
    )


@dataclass(frozen=True, slots=True)
class SoakPlan:
    config: SoakConfig
    cases: list[PlannedCase]
    faults: list[Fault] = field(default_factory=list)

    def of_kind(self, kind: FaultKind) -> list[Fault]:
        return [fault for fault in self.faults if fault.kind == kind]


def plan(config: SoakConfig) -> SoakPlan:
    rng = random.Random(config.seed)
    return SoakPlan(config=config, cases=_cases(config, rng), faults=sorted(_faults(config, rng), key=_order))


def _order(fault: Fault) -> tuple[float, str]:
    return fault.at_seconds, fault.label


def _cases(config: SoakConfig, rng: random.Random) -> list[PlannedCase]:
    # Every behaviour as evenly as the count allows, in a seeded order; creates spread over the first 80% of
    # the fault phase so that cases are at every stage of their lifecycle when each fault hits.
    behaviours = [BEHAVIOURS[i % len(BEHAVIOURS)] for i in range(config.cases)]
    rng.shuffle(behaviours)
    spread = config.fault_phase_seconds * 0.8
    cases = []
    for index, behaviour in enumerate(behaviours):
        silent = behaviour == "silent"
        cases.append(
            PlannedCase(
                index=index,
                behaviour=behaviour,
                address=f"{behaviour}.s{config.seed}n{index}@sim.example",
                idempotency_key=f"soak-{config.seed}-{index}",
                create_at_seconds=round(spread * index / max(config.cases, 1) + rng.uniform(0, 0.2), 2),
                # Silent counterparties get one quick follow-up (one "hour") and then fail `max_retries`; the
                # others get a delay well beyond a run, so a follow-up never races their scripted replies.
                follow_up_delay_hours=1 if silent else 48,
                max_attempts=1 if silent else 3,
            )
        )
    return cases


def _lane(rng: random.Random, kinds: list[tuple[FaultKind, str, float]], start: float, end: float) -> list[Fault]:
    """Place `kinds` (kind, target, duration) one after another in [start, end), in a seeded order, each in a
    slot of its own with a seeded offset, so that no two faults of a lane overlap."""
    rng.shuffle(kinds)
    if not kinds:
        return []
    slot = (end - start) / len(kinds)
    faults = []
    for number, (kind, target, duration) in enumerate(kinds):
        room = max(slot - duration, 0.0)
        at = start + number * slot + rng.uniform(0, room * 0.6)
        faults.append(Fault(kind=kind, at_seconds=round(at, 1), duration_seconds=duration, target=target))
    return faults


def _faults(config: SoakConfig, rng: random.Random) -> list[Fault]:
    start, end = 3.0, config.fault_phase_seconds - 3.0
    processes: list[tuple[FaultKind, str, float]] = [
        ("kill", name, round(rng.uniform(0.5, 3.0), 1)) for name in KILLABLE for _ in range(config.kills_per_process)
    ]
    processes += [("restart_nats", "", round(rng.uniform(2.0, 5.0), 1)) for _ in range(config.nats_restarts)]
    processes += [("restart_mongodb", "", round(rng.uniform(2.0, 5.0), 1)) for _ in range(config.mongodb_restarts)]
    agentmail: list[tuple[FaultKind, str, float]] = [
        (kind, "", round(rng.uniform(3.0, 6.0), 1))
        for kind in AGENTMAIL_WINDOWS
        for _ in range(config.agentmail_windows_per_kind)
    ]
    agentmail += [("agentmail_outage", "", config.outage_seconds) for _ in range(config.agentmail_outages)]
    model: list[tuple[FaultKind, str, float]] = [
        (kind, "", round(rng.uniform(3.0, 8.0), 1))
        for kind in MODEL_WINDOWS
        for _ in range(config.model_windows_per_kind)
    ]
    instant: list[Fault] = [
        Fault(kind="poison", at_seconds=round(rng.uniform(start, end), 1), duration_seconds=0.0, target=str(n))
        for n in range(config.poison_messages)
    ]
    instant += [
        Fault(
            kind="stray_inbound",
            at_seconds=round(rng.uniform(start + 10, end), 1),
            duration_seconds=0.0,
            target="stranger" if n % 2 == 0 else "counterparty",
        )
        for n in range(config.stray_inbound)
    ]
    return [
        *_lane(rng, processes, start, end),
        *_lane(rng, agentmail, start, end),
        *_lane(rng, model, start, end),
        *instant,
    ]

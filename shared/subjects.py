"""Every NATS name in one place: services, subjects, streams and durable consumers.

Subjects read `<service>.<kind>.<name>`: `rpc` for request/reply over core NATS (answered by a queue group
named after the service), `cmd` for durable commands and `evt` for durable events (both on JetStream).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Service(StrEnum):
    GATEWAY = "gateway"
    AUTH = "auth"
    BILLING = "billing"
    CASE = "case"
    AGENTMAIL_ADAPTER = "agentmail_adapter"
    WEBHOOK = "webhook"


# Services that answer request/reply (the gateway only asks).
BACKEND_SERVICES: Final = (
    Service.AUTH,
    Service.BILLING,
    Service.CASE,
    Service.AGENTMAIL_ADAPTER,
    Service.WEBHOOK,
)


# NATS users besides the services' own (each service connects as its name): the admin CLI, and the tests' user
# that may use every subject (never in a production configuration). deploy/nats_config.py grants the rights.
ADMIN_NATS_USER: Final = "admin"
TEST_NATS_USER: Final = "test"


def health_subject(service: Service) -> str:
    return f"{service}.rpc.health"


def queue_group(service: Service) -> str:
    return str(service)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream the code relies on; declared idempotently at service start-up."""

    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float
    # Window in which a repeated Nats-Msg-Id is dropped by the server.
    duplicate_window_seconds: float = 120.0
    description: str = ""
    # JetStream message schedules (`Nats-Schedule`) and per-message TTLs (`Nats-TTL`), nats-server 2.12+.
    allow_msg_schedules: bool = False
    # Messages kept per subject (-1: no limit); 1 makes a new publish replace the subject's previous message.
    max_msgs_per_subject: int = -1


DAY: Final = 86_400.0

# Commands to the case worker (created, input provided, send one email); cancel is a request, not a command.
CASE_COMMANDS: Final = StreamSpec(
    name="CASE_COMMANDS",
    subjects=("case.cmd.>",),
    max_age_seconds=14 * DAY,
    description="Durable commands for the case worker: created, input provided, send an email.",
)
# Case state changes that clients may hear about (webhooks).
CASE_EVENTS: Final = StreamSpec(
    name="CASE_EVENTS",
    subjects=("case.evt.>",),
    max_age_seconds=14 * DAY,
    description="Case lifecycle events: completed, failed, input needed, cancelled.",
)
# Inbound AgentMail webhooks, verified and deduplicated by the adapter.
AGENTMAIL_EVENTS: Final = StreamSpec(
    name="AGENTMAIL_EVENTS",
    subjects=("agentmail.evt.>",),
    max_age_seconds=14 * DAY,
    description="Verified AgentMail events: messages received, delivery events.",
)
# Messages whose handler kept failing as poison, kept for an operator (`python -m services.auth.admin parked`).
PARKED: Final = StreamSpec(
    name="PARKED",
    subjects=("parked.>",),
    max_age_seconds=30 * DAY,
    description="Poison messages parked after the consumer's maximum poison failures (never for an outage).",
)

# Follow-up and lease timers: one scheduled message per case on `case.timer.at.<caseId>` (the newest replaces the
# previous one), which nats-server publishes to `case.timer.due.<caseId>` at the case's due time.
CASE_TIMERS: Final = StreamSpec(
    name="CASE_TIMERS",
    subjects=("case.timer.>",),
    # No age limit: a schedule may be weeks out. Fired messages carry their own TTL (TIMER_DUE_TTL).
    max_age_seconds=0.0,
    description="Per-case timers: a JetStream message schedule per case, fired when its next action is due.",
    allow_msg_schedules=True,
    max_msgs_per_subject=1,
)
TIMER_SCHEDULES: Final = "case.timer.at.*"
TIMERS_DUE: Final = "case.timer.due.*"
# How long a fired timer waits for the case service before it expires (the safety scan then finds the case).
TIMER_DUE_TTL: Final = "24h"


def timer_schedule_subject(case_id: str) -> str:
    return f"case.timer.at.{case_id}"


def timer_due_subject(case_id: str) -> str:
    return f"case.timer.due.{case_id}"


ALL_STREAMS: Final = (CASE_COMMANDS, CASE_EVENTS, AGENTMAIL_EVENTS, PARKED, CASE_TIMERS)


@dataclass(frozen=True, slots=True)
class ObjectBucket:
    """A JetStream object store bucket (chunked blobs larger than one NATS message)."""

    name: str
    ttl_seconds: float
    description: str = ""


# AgentMail webhook bodies too large for one NATS message, handed from the gateway to the adapter by name. The
# gateway deletes each after the adapter answered; the TTL only sweeps what a crash left behind.
AGENTMAIL_INGRESS_BODIES: Final = ObjectBucket(
    name="AGENTMAIL_INGRESS_BODIES",
    ttl_seconds=3600.0,
    description="AgentMail webhook bodies too large to forward inline, read by the adapter to verify them.",
)


@dataclass(frozen=True, slots=True)
class KeyValueBucket:
    """A JetStream key-value bucket; `ttl_seconds` is how long a key lives after its last write."""

    name: str
    ttl_seconds: float
    description: str = ""


# The gateways' shared throttle: one token bucket per API key and route class, updated by compare-and-set. An idle
# key vanishes after the TTL, which is the same as a full bucket for every rate that refills within an hour.
THROTTLE_BUCKETS: Final = KeyValueBucket(
    name="THROTTLE_BUCKETS",
    ttl_seconds=3600.0,
    description="Token buckets per API key and route class, shared by every gateway replica.",
)


# Poison failures per JetStream message, counted by every replica of its consumer (shared.messaging.poison): a
# key outlives any message's redeliveries (they are minutes apart at most) and then expires unread.
POISON_COUNTS: Final = KeyValueBucket(
    name="POISON_COUNTS",
    ttl_seconds=86_400.0,
    description="Poison failures per message of each durable consumer, shared by the consumer's replicas.",
)


class Consumer(StrEnum):
    """Durable JetStream consumer names (shared by every replica of the consuming service): `<service>-<what>`,
    lower-case and hyphenated."""

    CASE_CREATED = "case-created"
    CASE_SEND = "case-send"
    CASE_INPUT = "case-input"
    CASE_JUDGE_REPLY = "case-judge-reply"
    CASE_MESSAGES = "case-agentmail-messages"
    CASE_DELIVERIES = "case-agentmail-deliveries"
    CASE_TIMERS = "case-timers"
    WEBHOOK_CASE_EVENTS = "webhook-case-events"


def parked_subject(stream: str, consumer: str) -> str:
    return f"parked.{stream}.{consumer}"


# Headers carried on every message.
REQUEST_ID_HEADER: Final = "X-Request-Id"
MSG_ID_HEADER: Final = "Nats-Msg-Id"

# Headers of a parked message: where it came from (its replay goes back there) and why it was parked.
PARKED_SUBJECT_HEADER: Final = "Caseflow-Parked-Subject"
PARKED_STREAM_HEADER: Final = "Caseflow-Parked-Stream"
PARKED_CONSUMER_HEADER: Final = "Caseflow-Parked-Consumer"
PARKED_SEQUENCE_HEADER: Final = "Caseflow-Parked-Sequence"  # its sequence in the original stream
PARKED_MSG_ID_HEADER: Final = "Caseflow-Parked-Msg-Id"  # the original publish's Nats-Msg-Id
PARKED_REASON_HEADER: Final = "Caseflow-Parked-Reason"
PARKED_DELIVERIES_HEADER: Final = "Caseflow-Parked-Deliveries"  # JetStream's num_delivered when parked
# The absolute deadline of a request (Unix ms), set by `shared.messaging.rpc.request` from its timeout: a service
# drops work whose deadline has passed before it commits (the asker has given up on the answer).
DEADLINE_HEADER: Final = "Caseflow-Deadline"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` one or more."""
    pattern_tokens, subject_tokens = pattern.split("."), subject.split(".")
    for index, part in enumerate(pattern_tokens):
        if part == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens) or part not in ("*", subject_tokens[index]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


def stream_of(subject: str) -> StreamSpec | None:
    """The stream that captures `subject`, or None for a core NATS subject."""
    return next((s for s in ALL_STREAMS if any(subject_matches(p, subject) for p in s.subjects)), None)

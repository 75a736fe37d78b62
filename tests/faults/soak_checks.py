"""The chaos soak's checks: pure functions from what was observed from outside to pass/fail with counts.

Everything checked here was read through the same doors a client or an operator has: the HTTP API (cases,
transcripts, webhook-delivery logs), the simulator's `/_sim` log of what it sent, received and was called with,
the webhook receiver, the PARKED stream and MongoDB read-only. The one design decision: each check names the
contract rule it holds (docs/api.md, docs/architecture.md), counts what it looked at, and keeps a few concrete
failures (case ids, addresses, message ids) so that a failing seed says what to look at, not just "failed".
"""

from __future__ import annotations

import hmac
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from standardwebhooks import Webhook

from shared.contracts.case import NOTHING_SCHEDULED
from tests.faults.soak_plan import PlannedCase

type Json = dict[str, Any]

TERMINAL: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
TERMINAL_EVENT: Final = {"COMPLETED": "case.completed", "FAILED": "case.failed", "CANCELLED": "case.cancelled"}
# How each scripted counterparty's case must end (docs/agentmail.md's table, docs/api.md's lifecycle).
EXPECTED_OUTCOME: Final = {
    "agree": ("COMPLETED", "goal_achieved"),
    "ask": ("COMPLETED", "goal_achieved"),  # after the soak client answers the input request
    "chat": ("COMPLETED", "goal_achieved"),
    "refuse": ("FAILED", "failed_rejected"),
    "silent": ("FAILED", "max_retries"),
    "bounce": ("FAILED", "BOUNCED"),
    "complain": ("FAILED", "COMPLAINED"),
    "reject": ("FAILED", "REJECTED"),
}
SEND_FAILED: Final = ("FAILED", "send_failed")
# The collection of inbound mail that matched no case (issue 14 item 6, added in parallel). Its absence is a
# failure of the inbound check whenever some inbound message is in no transcript, never a skip.
UNMATCHED_COLLECTION: Final = "unmatched_messages"
SAMPLES: Final = 5


@dataclass(slots=True)
class CreateAnswer:
    """One answer to one POST /cases attempt; status None: no answer (connection refused, reset, timeout)."""

    at_seconds: float
    status: int | None
    code: str | None = None
    case_id: str | None = None
    replayed: bool = False


@dataclass(slots=True)
class CreateRecord:
    planned: PlannedCase
    answers: list[CreateAnswer] = field(default_factory=list)

    @property
    def case_id(self) -> str | None:
        """The case the client was given (a 201), if it ever was."""
        ids = [answer.case_id for answer in self.answers if answer.status == 201 and answer.case_id]
        return ids[-1] if ids else None

    @property
    def answered_5xx_or_nothing(self) -> bool:
        return any(answer.status is None or answer.status >= 500 for answer in self.answers)


@dataclass(slots=True)
class Observed:
    """Everything the checks read, gathered after the run."""

    now_ms: int
    creates: list[CreateRecord]
    cases: list[Json]  # GET /cases items of the soak client (ghosts included)
    transcripts: dict[str, list[Json]]  # caseId → conversationMessages
    webhook_logs: dict[str, list[Json]]  # caseId → GET /cases/{id}/webhook-deliveries items
    received_webhooks: list[tuple[dict[str, str], bytes]]  # what the client's endpoint received
    webhook_secret: str
    outbox: list[Json]  # simulator: messages sent through its API to soak addresses
    provider_calls: list[Json]  # simulator: every /v0 call (send/reply with their Idempotency-Key)
    inbound: list[Json]  # simulator: every message.received event it delivered to our inbox
    sent_records: list[Json]  # MongoDB (read-only): the adapter's outbound messages (caseId, attempt)
    unmatched: list[Json] | None  # MongoDB: the unmatched store, None when the collection does not exist
    parked: list[tuple[str, bytes]]  # PARKED stream: (original subject, body)
    poison_markers: list[str]
    answered_inputs: dict[str, int]  # caseId → inputs the soak client got a 202 for
    model_calls_by_address: dict[str, int]
    unreadable: list[str] = field(default_factory=list)  # final reads that got no 2xx within their patience


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    counts: str
    failures: list[str] = field(default_factory=list)


def _result(name: str, looked_at: int, bad: list[str], what: str) -> CheckResult:
    return CheckResult(name, not bad, f"{looked_at} {what}, {len(bad)} failures", bad[:SAMPLES])


def _nothing_read(observed: Observed) -> list[str]:
    """A check over no case at all passes nothing: the reads failed."""
    return ["no case could be read"] if not observed.cases and observed.creates else []


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks signature check without its 5-minute freshness window: the soak checks signatures
    long after delivery, and freshness is the receiver's concern, proven elsewhere."""
    try:
        stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        expected = Webhook(secret).sign(headers["webhook-id"], stamp, body.decode()).split(",", 1)[1]
    except (KeyError, ValueError):
        return False
    offered = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split() if part.startswith("v1,")]
    return any(hmac.compare_digest(expected, signature) for signature in offered)


def _by_address(cases: Iterable[Json]) -> dict[str, list[Json]]:
    grouped: dict[str, list[Json]] = defaultdict(list)
    for case in cases:
        grouped[str(case["counterparty"]["address"]).lower()].append(case)
    return grouped


def check_creates_answered(observed: Observed) -> CheckResult:
    """Every create was eventually answered 201 under its Idempotency-Key (retried on 5xx or no answer)."""
    bad = []
    for record in observed.creates:
        if record.case_id is None:
            last = record.answers[-1] if record.answers else None
            bad.append(f"{record.planned.address}: {len(record.answers)} tries, last {last}")
        elif len({a.case_id for a in record.answers if a.status == 201}) > 1:
            bad.append(f"{record.planned.address}: one key, several caseIds")
    return _result("every create answered 201 under its key", len(observed.creates), bad, "creates")


def check_settled(observed: Observed) -> CheckResult:
    """Every case terminal, or legitimately waiting: INPUT_NEEDED with a PENDING request, or RUNNING with a
    future nextActionAt (the sentinel is no schedule at all: a case that waits for nothing is wedged)."""
    bad = _nothing_read(observed)
    for case in observed.cases:
        status = case["status"]
        if status in TERMINAL:
            continue
        request = case.get("inputRequest")
        if status == "INPUT_NEEDED" and request is not None and request.get("status") == "PENDING":
            continue
        next_action = int(case["nextActionAt"])
        if status == "RUNNING" and observed.now_ms < next_action < NOTHING_SCHEDULED:
            continue
        bad.append(
            f"{case['caseId']} {case['counterparty']['address']}: {status}, inputRequest={request}, "
            f"nextActionAt={next_action}"
        )
    return _result("terminal or legitimately waiting", len(observed.cases), bad, "cases")


def check_none_created(observed: Observed) -> CheckResult:
    bad = _nothing_read(observed)
    bad += [f"{c['caseId']} {c['counterparty']['address']}" for c in observed.cases if c["status"] == "CREATED"]
    return _result("none left CREATED", len(observed.cases), bad, "cases")


def check_outcomes(observed: Observed, sent_4xx_cases: set[str]) -> CheckResult:
    """Each case ended as its counterparty's script says (send_failed only for a case whose own send was
    answered a terminal 4xx during an injected window)."""
    bad = []
    looked = 0
    by_address = _by_address(observed.cases)
    for record in observed.creates:
        case_id = record.case_id
        if case_id is None:
            continue
        looked += 1
        case = next((c for c in by_address.get(record.planned.address, []) if c["caseId"] == case_id), None)
        if case is None:
            bad.append(f"{case_id} {record.planned.address}: neither listed by GET /cases nor readable")
            continue
        outcome = (case["status"], case.get("resultStatus"))
        allowed = {EXPECTED_OUTCOME[record.planned.behaviour]}
        if case_id in sent_4xx_cases:
            allowed.add(SEND_FAILED)
        if outcome not in allowed:
            bad.append(f"{case_id} {record.planned.address}: {outcome}, expected one of {sorted(allowed, key=str)}")
    return _result("outcome as the counterparty's script says", looked, bad, "cases")


def attempt_of_key(key: str | None) -> tuple[str, int] | None:
    """(caseId, attempt) from the adapter's Idempotency-Key `<caseId>.<attempt>`."""
    if not key or "." not in key:
        return None
    case_id, _, attempt = key.rpartition(".")
    return (case_id, int(attempt)) if attempt.isdigit() else None


def check_one_email_per_attempt(observed: Observed) -> CheckResult:
    """No counterparty got two emails for the same (case, attempt), and no attempt number was reused for a
    different email (AgentMail answers 409 to a key reused with another body: the email is then lost)."""
    bad = []
    by_message = {str(r["_id"]): r for r in observed.sent_records}
    emails_per_attempt: Counter[tuple[str, int]] = Counter()
    for message in observed.outbox:
        record = by_message.get(str(message["message_id"]))
        if record is None or record.get("caseId") is None:
            bad.append(f"email {message['message_id']} to {message['to']}: no (case, attempt) recorded for it")
            continue
        emails_per_attempt[(str(record["caseId"]), int(record["attempt"]))] += 1
    bad += [f"case {case} attempt {attempt}: {n} emails" for (case, attempt), n in emails_per_attempt.items() if n > 1]
    reused = [
        call for call in observed.provider_calls if call["operation"] in {"send", "reply"} and call["status"] == 409
    ]
    bad += [
        f"attempt reused for another email: {attempt_of_key(call['idempotency_key'])} answered 409" for call in reused
    ]
    return _result("one email per (case, attempt)", len(observed.outbox) + len(reused), bad, "emails and 409s")


def check_no_ghost_outreach(observed: Observed) -> CheckResult:
    """No email went out for a create answered 5xx (or not at all) unless a retry with its key returned that
    same case: every email to a soak address belongs to the case its create was answered with."""
    bad = []
    answered = {record.planned.address: record.case_id for record in observed.creates}
    email_cases: dict[str, set[str]] = defaultdict(set)
    by_message = {str(r["_id"]): r for r in observed.sent_records}
    for message in observed.outbox:
        record = by_message.get(str(message["message_id"]))
        for address in message["to"]:
            email_cases[str(address).lower()].add(str(record.get("caseId")) if record else "<unrecorded>")
    for address, cases in _by_address(observed.cases).items():
        for case in cases:
            if case["caseId"] != answered.get(address) and int(case["attemptCount"]) > 0:
                bad.append(
                    f"ghost {case['caseId']} {address}: {case['attemptCount']} emails, client was given "
                    f"{answered.get(address)}"
                )
    for address, senders in email_cases.items():
        foreign = senders - {answered.get(address)}
        if foreign:
            bad.append(f"{address}: emails from {sorted(foreign)}, client was given {answered.get(address)}")
    five_xx = sum(1 for record in observed.creates if record.answered_5xx_or_nothing)
    result = _result("no outreach for a create answered 5xx", len(email_cases), bad, "addresses emailed")
    return CheckResult(
        result.name, result.passed, f"{result.counts}; {five_xx} creates saw a 5xx/no answer", result.failures
    )


def check_webhooks(observed: Observed) -> CheckResult:
    """Every status change has its webhook delivered, checked against GET /cases/{id} and the webhook-delivery
    log; a status change reaches the client under one webhook-id only (duplicates only with the same id)."""
    bad = []
    received: dict[str, list[Json]] = defaultdict(list)  # caseId → bodies
    ids_by_change: dict[tuple[str, str], set[str]] = defaultdict(set)
    for headers, body in observed.received_webhooks:
        if not signed_by(observed.webhook_secret, headers, body):
            bad.append(f"webhook {headers.get('webhook-id')}: signature does not verify")
            continue
        event: Json = json.loads(body)
        if headers.get("webhook-id") != event["event_id"]:
            bad.append(f"webhook-id {headers.get('webhook-id')} is not event_id {event['event_id']}")
        case_id = str(event["data"]["caseId"])
        received[case_id].append(event)
        # A case may need input more than once: each input request is its own status change.
        change = event["event_type"]
        if change == "case.input_needed":
            change += f":{event['data'].get('inputRequestId')}"
        ids_by_change[(case_id, change)].add(event["event_id"])
    bad += [
        f"{case} {kind}: {len(ids)} webhook-ids {sorted(ids)}"
        for (case, kind), ids in ids_by_change.items()
        if len(ids) > 1
    ]
    for case in observed.cases:
        case_id = str(case["caseId"])
        got = {event["event_id"] for event in received.get(case_id, [])}
        types = {event["event_type"] for event in received.get(case_id, [])}
        for logged in observed.webhook_logs.get(case_id, []):
            if logged["eventId"] not in got:
                bad.append(
                    f"{case_id}: {logged['eventType']} {logged['eventId']} logged ({logged['state']}) but "
                    "never received"
                )
        wanted = TERMINAL_EVENT.get(case["status"])
        if wanted is not None and wanted not in types:
            bad.append(f"{case_id} {case['counterparty']['address']}: {case['status']} without a {wanted} webhook")
        if case.get("inputRequest") is not None and "case.input_needed" not in types:
            bad.append(f"{case_id}: had an input request without a case.input_needed webhook")
        terminal_types = types & set(TERMINAL_EVENT.values())
        if len(terminal_types) > 1 or (terminal_types and wanted not in terminal_types):
            bad.append(f"{case_id}: terminal webhooks {sorted(terminal_types)} but the case is {case['status']}")
    return _result("every status change's webhook delivered once", len(observed.cases), bad, "cases")


def check_parked(observed: Observed) -> CheckResult:
    """Nothing parked except the poison injected on purpose, and each poison message parked."""
    bad = []
    for subject, body in observed.parked:
        if not any(marker.encode() in body for marker in observed.poison_markers):
            bad.append(f"parked from {subject}: {body[:160]!r}")
    for marker in observed.poison_markers:
        if not any(marker.encode() in body for _, body in observed.parked):
            bad.append(f"injected poison {marker} was not parked")
    return _result(
        "parked = exactly the injected poison",
        len(observed.parked) + len(observed.poison_markers),
        bad,
        "parked or injected",
    )


def check_inbound(observed: Observed) -> CheckResult:
    """No inbound message discarded: each message the simulator delivered to our inbox is in some case's
    transcript or in the unmatched store."""
    in_transcripts = {str(m["messageId"]) for messages in observed.transcripts.values() for m in messages}
    unmatched_ids = {
        str(value)
        for document in observed.unmatched or []
        for key, value in document.items()
        if key in {"_id", "messageId", "message_id"}
    }
    bad = []
    for message in observed.inbound:
        message_id = str(message["message_id"])
        if message_id in in_transcripts or message_id in unmatched_ids:
            continue
        where = (
            f"collection {UNMATCHED_COLLECTION!r} does not exist"
            if observed.unmatched is None
            else "not in the unmatched store"
        )
        # Not acknowledged: every attempt so far got an error or no answer (the work may still have been done).
        ingress = "acknowledged by our ingress" if message.get("accepted") else "not acknowledged by our ingress"
        bad.append(f"{message_id} from {message['from']} ({ingress}): in no transcript, {where}")
    result = _result("no inbound message discarded", len(observed.inbound), bad, "inbound messages")
    refused = sum(1 for message in observed.inbound if not message.get("accepted"))
    return CheckResult(result.name, result.passed, f"{result.counts}; {refused} not acknowledged 2xx", result.failures)


def check_model_share(observed: Observed) -> CheckResult:
    """A share of the cases was judged or written by the openai backend (the fake model saw their address)."""
    touched = [record for record in observed.creates if observed.model_calls_by_address.get(record.planned.address)]
    looked = len(observed.creates)
    passed = looked == 0 or len(touched) >= max(1, looked // 10)
    return CheckResult(
        "a share of the cases on AGENT_BACKEND=openai",
        passed,
        f"{len(touched)}/{looked} cases reached the fake model",
        [] if passed else ["fewer than 10% of the cases reached the fake model"],
    )


def sent_4xx_cases(observed: Observed) -> set[str]:
    """Cases whose own send or reply was answered 400/404/422 (an injected terminal window)."""
    found = set()
    for call in observed.provider_calls:
        if call["operation"] in {"send", "reply"} and call["status"] in {400, 404, 422}:
            pair = attempt_of_key(call.get("idempotency_key"))
            if pair is not None:
                found.add(pair[0])
    return found


def check_readable(observed: Observed) -> CheckResult:
    """The API answered every final read (a case it cannot show is checked only from its list item)."""
    return _result("the API answered every final read", len(observed.cases), observed.unreadable, "cases read")


def run_checks(observed: Observed) -> list[CheckResult]:
    return [
        check_readable(observed),
        check_creates_answered(observed),
        check_settled(observed),
        check_none_created(observed),
        check_outcomes(observed, sent_4xx_cases(observed)),
        check_one_email_per_attempt(observed),
        check_no_ghost_outreach(observed),
        check_webhooks(observed),
        check_parked(observed),
        check_inbound(observed),
        check_model_share(observed),
    ]

"""The chaos soak's plan and checks, without a stack: the plan is reproducible from its seed and as hard as
issue 14 asks, and each check fails on a hand-made observation of the failure it exists to catch (and passes on
its healthy twin). The short run itself is `tests/faults/test_short_soak.py` (`make test-faults`, so CI).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from shared.contracts.case import NOTHING_SCHEDULED
from tests.faults.soak_checks import (
    CreateAnswer,
    CreateRecord,
    Observed,
    check_inbound,
    check_no_ghost_outreach,
    check_none_created,
    check_one_email_per_attempt,
    check_parked,
    check_settled,
    check_webhooks,
)
from tests.faults.soak_plan import BEHAVIOURS, KILLABLE, PlannedCase, SoakConfig, plan, short_config

SEED = 1414


def test_one_seed_gives_one_schedule_and_case_mix_and_another_seed_another() -> None:
    assert plan(SoakConfig(seed=SEED)) == plan(SoakConfig(seed=SEED))
    assert plan(SoakConfig(seed=SEED)).faults != plan(SoakConfig(seed=SEED + 1)).faults
    assert plan(SoakConfig(seed=SEED)).cases != plan(SoakConfig(seed=SEED + 1)).cases


def test_the_full_soak_covers_what_issue_14_asks_for() -> None:
    full = plan(SoakConfig(seed=SEED))
    assert len(full.cases) >= 300
    assert Counter(case.behaviour for case in full.cases).keys() == set(BEHAVIOURS)
    kills = Counter(fault.target for fault in full.of_kind("kill"))
    assert {name: kills[name] for name in KILLABLE} == {name: 2 for name in KILLABLE}
    assert len(full.of_kind("restart_nats")) >= 1
    assert len(full.of_kind("restart_mongodb")) >= 1
    for kind in ("agentmail_5xx", "agentmail_timeout", "agentmail_429", "agentmail_422", "model_5xx", "model_timeout"):
        assert full.of_kind(kind), kind
    (outage,) = full.of_kind("agentmail_outage")
    assert outage.duration_seconds > full.config.retry_budget_seconds
    assert full.of_kind("poison")


@pytest.mark.parametrize("config", [SoakConfig(seed=SEED), short_config(SEED)], ids=["full", "short"])
def test_faults_of_one_lane_never_overlap(config: SoakConfig) -> None:
    soak_plan = plan(config)
    lanes = {
        "processes": ("kill", "restart_nats", "restart_mongodb"),
        "agentmail": ("agentmail_5xx", "agentmail_timeout", "agentmail_429", "agentmail_422", "agentmail_outage"),
        "model": ("model_5xx", "model_timeout"),
    }
    for kinds in lanes.values():
        lane = sorted((f for f in soak_plan.faults if f.kind in kinds), key=lambda f: f.at_seconds)
        for earlier, later in itertools.pairwise(lane):
            assert earlier.at_seconds + earlier.duration_seconds <= later.at_seconds
        assert all(f.at_seconds + f.duration_seconds <= soak_plan.config.fault_phase_seconds for f in lane)


# ---- the checks themselves fail when they should (no stack needed) ----------------------------------------

SECRET = "whsec_" + base64.b64encode(b"soak-check-test-secret").decode()


def planned(index: int, behaviour: str = "agree") -> PlannedCase:
    return PlannedCase(index, behaviour, f"{behaviour}.s1n{index}@sim.example", f"soak-1-{index}", 0.0, 48, 3)


def case(case_id: str, address: str, status: str = "COMPLETED", **fields: Any) -> dict[str, Any]:
    return {
        "caseId": case_id,
        "status": status,
        "resultStatus": "goal_achieved" if status == "COMPLETED" else None,
        "counterparty": {"address": address},
        "attemptCount": 1,
        "nextActionAt": NOTHING_SCHEDULED,
        "inputRequest": None,
        **fields,
    }


def observed(**fields: Any) -> Observed:
    values: dict[str, Any] = {
        "now_ms": 1_000,
        "creates": [],
        "cases": [],
        "transcripts": {},
        "webhook_logs": {},
        "received_webhooks": [],
        "webhook_secret": SECRET,
        "outbox": [],
        "provider_calls": [],
        "inbound": [],
        "sent_records": [],
        "unmatched": None,
        "parked": [],
        "poison_markers": [],
        "answered_inputs": {},
        "model_calls_by_address": {},
    }
    return Observed(**{**values, **fields})


def given(record: PlannedCase, case_id: str | None, *statuses: int | None) -> CreateRecord:
    answers = [CreateAnswer(0.0, status, case_id=case_id if status == 201 else None) for status in statuses]
    return CreateRecord(record, answers)


def test_an_email_for_a_case_the_client_was_never_given_fails_the_outreach_check() -> None:
    first = planned(0)
    emailed = {"message_id": "<m1>", "to": [first.address]}
    record = {"_id": "<m1>", "caseId": "ghost", "attempt": 1}
    ghost = observed(
        creates=[given(first, None, 503, None)],
        cases=[case("ghost", first.address)],
        outbox=[emailed],
        sent_records=[record],
    )
    assert not check_no_ghost_outreach(ghost).passed
    retried = observed(
        creates=[given(first, "real", 503, 201)],
        cases=[case("real", first.address)],
        outbox=[emailed],
        sent_records=[{**record, "caseId": "real"}],
    )
    assert check_no_ghost_outreach(retried).passed


def test_two_emails_for_one_attempt_or_a_reused_attempt_fail_the_email_check() -> None:
    outbox = [{"message_id": "<m1>", "to": ["a"]}, {"message_id": "<m2>", "to": ["a"]}]
    records = [{"_id": "<m1>", "caseId": "c", "attempt": 1}, {"_id": "<m2>", "caseId": "c", "attempt": 1}]
    assert not check_one_email_per_attempt(observed(outbox=outbox, sent_records=records)).passed
    distinct = [records[0], {**records[1], "attempt": 2}]
    assert check_one_email_per_attempt(observed(outbox=outbox, sent_records=distinct)).passed
    conflict = [{"operation": "reply", "status": 409, "idempotency_key": "c.2"}]
    assert not check_one_email_per_attempt(observed(provider_calls=conflict)).passed


def test_created_wedged_and_unreadable_cases_fail_the_settled_checks() -> None:
    waiting = case("w", "ask.s1n0@sim.example", "INPUT_NEEDED", inputRequest={"id": "r", "status": "PENDING"})
    running = case("r", "chat.s1n1@sim.example", "RUNNING", nextActionAt=5_000)
    assert check_settled(observed(cases=[waiting, running])).passed
    wedged = case("x", "ask.s1n2@sim.example", "INPUT_NEEDED", inputRequest={"id": "r", "status": "RESOLVED"})
    assert not check_settled(observed(cases=[wedged])).passed
    assert not check_settled(observed(cases=[case("y", "chat.s1n3@sim.example", "RUNNING")])).passed
    assert not check_none_created(observed(cases=[case("z", "agree.s1n4@sim.example", "CREATED")])).passed
    assert not check_settled(observed(creates=[given(planned(5), "q", 201)])).passed  # nothing could be read


def test_a_missing_unsigned_or_doubled_terminal_webhook_fails_the_webhook_check() -> None:
    done = case("c", "agree.s1n0@sim.example")

    def delivery(event_id: str, secret: str = SECRET) -> tuple[dict[str, str], bytes]:
        body = json.dumps({"event_id": event_id, "event_type": "case.completed", "data": {"caseId": "c"}})
        stamp = datetime.now(UTC)
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(event_id, stamp, body),
        }
        return headers, body.encode()

    assert check_webhooks(observed(cases=[done], received_webhooks=[delivery("e1"), delivery("e1")])).passed
    assert not check_webhooks(observed(cases=[done])).passed
    other_secret = "whsec_" + base64.b64encode(b"another-secret").decode()
    assert not check_webhooks(observed(cases=[done], received_webhooks=[delivery("e1", other_secret)])).passed
    assert not check_webhooks(observed(cases=[done], received_webhooks=[delivery("e1"), delivery("e2")])).passed


def test_anything_parked_but_the_poison_and_any_inbound_mail_nowhere_fail() -> None:
    poison = [("case.cmd.created", b'{"soakPoison":"p-1"}')]
    assert check_parked(observed(parked=poison, poison_markers=["p-1"])).passed
    assert not check_parked(observed(parked=[*poison, ("case.cmd.send", b"{}")], poison_markers=["p-1"])).passed
    assert not check_parked(observed(parked=[], poison_markers=["p-1"])).passed
    inbound = [{"message_id": "<in1>", "from": "x@y", "accepted": True}]
    assert not check_inbound(observed(inbound=inbound)).passed  # no transcript has it, no unmatched store
    assert check_inbound(observed(inbound=inbound, unmatched=[{"messageId": "<in1>"}])).passed
    assert check_inbound(observed(inbound=inbound, transcripts={"c": [{"messageId": "<in1>"}]})).passed

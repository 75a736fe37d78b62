"""The request deadline header (shared.messaging.rpc) and the per-case created subject (shared.contracts.case)."""

from __future__ import annotations

from shared.contracts.case import CMD_CREATED, created_msg_id, created_subject
from shared.messaging.rpc import request_deadline_ms
from shared.metrics import bounded_subject
from shared.subjects import DEADLINE_HEADER


def test_the_deadline_header_is_read_as_unix_ms_and_garbage_counts_as_none() -> None:
    assert request_deadline_ms({DEADLINE_HEADER: "1764581400000"}) == 1_764_581_400_000
    assert request_deadline_ms({}) is None
    assert request_deadline_ms({DEADLINE_HEADER: "soon"}) is None
    assert request_deadline_ms({DEADLINE_HEADER: "-5"}) is None


def test_each_case_has_its_own_created_subject_counted_under_one_wildcard() -> None:
    subject = created_subject("7d1c")
    assert subject == "case.cmd.created.7d1c"
    assert created_msg_id("7d1c") == "created:7d1c"
    # Metrics label it by the wildcard the consumer filters on: one series, not one per case.
    assert bounded_subject(subject) == CMD_CREATED == "case.cmd.created.*"
    assert bounded_subject("case.rpc.create") == "case.rpc.create"

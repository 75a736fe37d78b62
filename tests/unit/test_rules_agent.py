"""The rules agent: deterministic emails and judgements, and results shaped by resultSchema."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from services.case import domain
from services.case.agent.port import ComposeRequest, Judgement, JudgeRequest
from services.case.agent.rules import RulesAgent
from services.case.lifecycle import result_problem, with_human_context
from services.case.model import CaseRecord
from shared.contracts.agentmail import AttachmentInfo, TranscriptMessage
from shared.contracts.case import NewCase
from simulator.agentmail.counterparties import Step, counterparty_for, reply_for

AT = 1_774_131_900_000  # 2026-03-21T22:25:00Z


def case(**overrides: Any) -> CaseRecord:
    body: dict[str, Any] = {
        "channel": "EMAIL",
        "goal": {
            "objective": "Collect a signed W-9 from the vendor",
            "knowledge": {"vendorName": "Northstar", "dueDate": "2026-04-10"},
        },
        "counterparty": {"address": "ap@northstar.example", "name": "Maya Chen"},
        "senderPersona": {"name": "Avery", "role": "Accounts Payable", "company": "Example Corp"},
        "constraints": ["Email only"],
        "resultSchema": {
            "type": "object",
            "properties": {
                "signedW9Received": {"type": "boolean"},
                "receivedAt": {"type": "string", "format": "date-time"},
                "taxId": {"type": "string", "pattern": "^[0-9]{2}-[0-9]{7}$"},
                "documents": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["signedW9Received"],
        },
    }
    body.update(overrides)
    return domain.new_case(case_id="c1", client_id="a", body=msgspec.convert(body, NewCase), now=AT)


def inbound(text: str, *, attachments: list[AttachmentInfo] | None = None) -> TranscriptMessage:
    return TranscriptMessage(
        direction="inbound",
        message_id="<in@x>",
        from_address="ap@northstar.example",
        to=["caseflow@sim.example"],
        subject="Re: W-9",
        text=text,
        at=AT,
        attachments=attachments or [],
    )


def judge(text: str, *, record: CaseRecord | None = None, trigger: str = "reply", **kwargs: Any) -> Judgement:
    request = JudgeRequest(case=record or case(), transcript=[inbound(text, **kwargs)], trigger=trigger)  # type: ignore[arg-type]
    return asyncio.run(RulesAgent().judge(request))


PDF = AttachmentInfo(attachment_id="a1", filename="w9-signed.pdf", size=900, content_type="application/pdf")


def simulated(step: Step, behaviour: str) -> str:
    counterparty = counterparty_for(f"{behaviour}@sim.example")
    assert counterparty is not None
    return reply_for(step, counterparty, subject="Collect a signed W-9", earlier_question=False).text


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        (simulated(Step.AGREE, "agree"), "GOAL_ACHIEVED"),
        (simulated(Step.CLIENT_QUESTION, "ask"), "NEEDS_INPUT"),
        (simulated(Step.AGENT_QUESTION, "chat"), "REQUIRES_REPLY"),
        (simulated(Step.REFUSE, "refuse"), "REFUSED"),
        ("Hi, I'm out this week and will look at it on Monday.", "WAIT"),
        ("Unfortunately we cannot provide tax forms to customers.", "REFUSED"),
        ("Here is the form you asked for.", "GOAL_ACHIEVED"),
        ("Which tax year should the form cover?", "NEEDS_INPUT"),
    ],
)
def test_judgement_of_typical_replies(text: str, outcome: str) -> None:
    assert judge(text).outcome == outcome


def test_a_client_question_is_passed_on_verbatim() -> None:
    judgement = judge(simulated(Step.CLIENT_QUESTION, "ask"))
    assert judgement.question is not None
    assert "PDF signed electronically be acceptable" in judgement.question


def test_after_the_client_answers_the_agent_replies_with_the_answer() -> None:
    informed = with_human_context(case(), "Yes, an electronically signed PDF is fine.")
    judgement = judge(simulated(Step.CLIENT_QUESTION, "ask"), record=informed, trigger="input")
    assert judgement.outcome == "REQUIRES_REPLY"
    assert judgement.reply is not None
    assert "electronically signed PDF is fine" in judgement.reply.text


def test_an_agreement_with_an_attachment_yields_a_result_that_validates() -> None:
    record = case()
    judgement = judge("Please find the signed W-9 attached. Our EIN is 12-3456789.", attachments=[PDF])
    assert judgement.outcome == "GOAL_ACHIEVED"
    assert judgement.result == {
        "signedW9Received": True,
        "receivedAt": "2026-03-21T22:25:00Z",
        "taxId": "12-3456789",
        "documents": ["w9-signed.pdf"],
    }
    assert result_problem(record.result_schema, judgement.result) is None


def test_fields_the_message_does_not_support_are_left_out() -> None:
    judgement = judge("Done, it is attached.", attachments=[PDF])
    assert judgement.result is not None
    assert "taxId" not in judgement.result


def test_emails_are_deterministic_and_written_from_the_case() -> None:
    agent = RulesAgent()
    request = ComposeRequest(case=case(), kind="first", attempt=1, transcript=[])
    first = asyncio.run(agent.compose(request))
    assert first == asyncio.run(agent.compose(request))
    assert first.subject == "Collect a signed W-9 from the vendor"
    assert "Hi Maya," in first.text
    assert "Avery" in first.text
    assert "Northstar" in first.text
    assert "Accounts Payable, Example Corp" in first.text
    follow_up = asyncio.run(agent.compose(ComposeRequest(case=case(), kind="follow_up", attempt=2, transcript=[])))
    assert follow_up.subject.startswith("Re: ")
    assert "following up" in follow_up.text

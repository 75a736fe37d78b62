"""The simulator's scripted counterparties as a table: which address gets which behaviour and which replies."""

from __future__ import annotations

import re

import pytest

from simulator.agentmail.counterparties import (
    Behaviour,
    Step,
    counterparty_for,
    reply_for,
    signed_document,
    step_for,
)
from simulator.agentmail.pdf import text_pdf


@pytest.mark.parametrize(
    ("recipient", "behaviour", "name"),
    [
        ("agree@sim.example", Behaviour.AGREE, "Jordan Lee"),
        ("Agree.Jane-Doe@SIM.example", Behaviour.AGREE, "Jane Doe"),
        ("Jane <ask.jane@sim.example>", Behaviour.ASK, "Jane"),
        ("chat_2@sim.example", Behaviour.CHAT, "Sam Rivera"),
        ("refuse.bob@sim.example", Behaviour.REFUSE, "Bob"),
        ("silent@sim.example", Behaviour.SILENT, "Alex Morgan"),
        ("bounce@sim.example", Behaviour.BOUNCE, "Alex Morgan"),
        ("complain@sim.example", Behaviour.COMPLAIN, "Alex Morgan"),
        ("reject@sim.example", Behaviour.REJECT, "Alex Morgan"),
    ],
)
def test_the_local_part_prefix_at_sim_example_chooses_the_behaviour(
    recipient: str, behaviour: Behaviour, name: str
) -> None:
    counterparty = counterparty_for(recipient)
    assert counterparty is not None
    assert (counterparty.behaviour, counterparty.name) == (behaviour, name)
    assert counterparty.mailbox.endswith(f"<{counterparty.address}>")


@pytest.mark.parametrize("recipient", ["agree@example.com", "jane@sim.example", "sim.example", "not an address"])
def test_anyone_else_has_no_scripted_behaviour(recipient: str) -> None:
    assert counterparty_for(recipient) is None


@pytest.mark.parametrize(
    ("behaviour", "script"),
    [
        (Behaviour.AGREE, [Step.AGREE, None]),
        (Behaviour.ASK, [Step.CLIENT_QUESTION, Step.AGREE, None]),
        (Behaviour.CHAT, [Step.AGENT_QUESTION, Step.AGREE, None]),
        (Behaviour.REFUSE, [Step.REFUSE, None]),
        (Behaviour.SILENT, [None]),
        (Behaviour.BOUNCE, [None]),
    ],
)
def test_the_nth_agent_email_gets_the_nth_scripted_reply_then_silence(
    behaviour: Behaviour, script: list[Step | None]
) -> None:
    counterparty = counterparty_for(f"{behaviour}@sim.example")
    assert counterparty is not None
    assert [step_for(counterparty, n) for n in range(1, len(script) + 1)] == script


@pytest.mark.parametrize(
    ("step", "must_say", "attached"),
    [
        (Step.AGREE, ["agree", "signed the document", "attached", "signed-document.pdf"], True),
        (Step.CLIENT_QUESTION, ["?", "signed electronically", "wet-ink"], False),
        (Step.AGENT_QUESTION, ["?", "what exactly you need"], False),
        (Step.REFUSE, ["won't be able to", "decline"], False),
    ],
)
def test_replies_state_their_intent_in_plain_words(step: Step, must_say: list[str], attached: bool) -> None:
    counterparty = counterparty_for("agree.jane@sim.example")
    assert counterparty is not None
    reply = reply_for(step, counterparty, subject="Re: Signed W-9", earlier_question=False)
    for phrase in must_say:
        assert phrase in reply.text
    assert reply.attach_document is attached
    assert '"Signed W-9"' in reply.text  # the topic comes from the subject, without "Re: "
    assert reply.text.rstrip().endswith(("Jane", "Jane Doe", "Regards,\nJane"))


def test_an_agreement_after_a_question_acknowledges_the_answer() -> None:
    counterparty = counterparty_for("ask@sim.example")
    assert counterparty is not None
    reply = reply_for(Step.AGREE, counterparty, subject="W-9", earlier_question=True)
    assert reply.text.startswith("Hi,\n\nThanks for getting back to me")


def test_the_signed_document_is_a_structurally_valid_pdf() -> None:
    counterparty = counterparty_for("agree.jane@sim.example")
    assert counterparty is not None
    pdf = signed_document(counterparty)
    assert pdf.startswith(b"%PDF-1.4\n")
    assert pdf.endswith(b"%%EOF\n")
    assert b"(Signed by: Jane <agree.jane@sim.example>) Tj" in pdf
    # startxref points at the xref table, and every xref entry points at its "N 0 obj".
    startxref = int(re.findall(rb"startxref\n(\d+)\n", pdf)[-1])
    assert pdf[startxref:].startswith(b"xref\n0 6\n")
    offsets = [int(entry) for entry in re.findall(rb"(\d{10}) 00000 n ", pdf)]
    assert len(offsets) == 5
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(b"%d 0 obj" % number)
    stream = re.search(rb"<< /Length (\d+) >>\nstream\n(.*?)\nendstream", pdf, re.DOTALL)
    assert stream is not None
    assert int(stream.group(1)) == len(stream.group(2))


def test_pdf_text_is_escaped() -> None:
    assert rb"(a \(b\) c\\) Tj" in text_pdf(["a (b) c\\"])

"""Scripted counterparties: the recipient's address picks a behaviour, and each behaviour is a short script.

A counterparty lives at `<local part>@sim.example`; the local part's prefix (`agree`, `ask`, `chat`, `refuse`,
`silent`, `bounce`, `complain`, `reject`) chooses the behaviour, as `agentmail.md` lists. Conversational
behaviours are a list of replies: the n-th email the agent sends in a thread is answered by the n-th entry,
and once the script is used up the counterparty stays quiet. The replies are written as a person would write
them, and each one states its intent in plain words ("attached", "signed", "won't be able to", a question)
so that a simple rules agent can judge it.

This module is pure: it decides what happens; `simulation.py` makes it happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr
from enum import StrEnum
from typing import Final

from simulator.agentmail.pdf import text_pdf

SIM_DOMAIN: Final = "sim.example"


class Behaviour(StrEnum):
    AGREE = "agree"
    ASK = "ask"
    CHAT = "chat"
    REFUSE = "refuse"
    SILENT = "silent"
    BOUNCE = "bounce"
    COMPLAIN = "complain"
    REJECT = "reject"


class Step(StrEnum):
    """One scripted reply."""

    AGREE = "agree"
    CLIENT_QUESTION = "client_question"
    AGENT_QUESTION = "agent_question"
    REFUSE = "refuse"


SCRIPTS: Final[dict[Behaviour, tuple[Step, ...]]] = {
    Behaviour.AGREE: (Step.AGREE,),
    Behaviour.ASK: (Step.CLIENT_QUESTION, Step.AGREE),
    Behaviour.CHAT: (Step.AGENT_QUESTION, Step.AGREE),
    Behaviour.REFUSE: (Step.REFUSE,),
}

DOCUMENT_FILENAME: Final = "signed-document.pdf"


@dataclass(frozen=True, slots=True)
class Counterparty:
    address: str  # bare, lower-cased
    behaviour: Behaviour
    name: str

    @property
    def mailbox(self) -> str:
        """The `From` header value: `Name <address>`."""
        return f"{self.name} <{self.address}>"


def counterparty_for(recipient: str) -> Counterparty | None:
    """The scripted counterparty behind `recipient` (bare or `Name <addr>`), or None for anyone else."""
    address = parseaddr(recipient)[1].strip().lower()
    local, _, domain = address.rpartition("@")
    if domain != SIM_DOMAIN or not local:
        return None
    for behaviour in Behaviour:
        if local.startswith(behaviour.value):
            return Counterparty(address=address, behaviour=behaviour, name=_name_from(local, behaviour))
    return None


_DEFAULT_NAMES: Final = {
    Behaviour.AGREE: "Jordan Lee",
    Behaviour.ASK: "Priya Shah",
    Behaviour.CHAT: "Sam Rivera",
    Behaviour.REFUSE: "Morgan Blake",
}


def _name_from(local: str, behaviour: Behaviour) -> str:
    """`agree.jane-doe` → "Jane Doe"; a bare `agree` gets a stock name."""
    rest = local.removeprefix(behaviour.value).replace("_", " ").replace(".", " ").replace("-", " ").strip()
    if rest and not rest.isdigit():
        return " ".join(part.capitalize() for part in rest.split())
    return _DEFAULT_NAMES.get(behaviour, "Alex Morgan")


def step_for(counterparty: Counterparty, agent_emails_in_thread: int) -> Step | None:
    """The reply to the agent's `agent_emails_in_thread`-th email (1-based) in a thread, if any."""
    script = SCRIPTS.get(counterparty.behaviour, ())
    if 1 <= agent_emails_in_thread <= len(script):
        return script[agent_emails_in_thread - 1]
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    attach_document: bool


def reply_for(step: Step, counterparty: Counterparty, *, subject: str, earlier_question: bool) -> Reply:
    """The counterparty's email for `step`; `earlier_question` says it asked something before agreeing."""
    first_name = counterparty.name.split()[0]
    sign_off = f"\n\nBest regards,\n{counterparty.name}"
    topic = subject.removeprefix("Re: ").strip() or "your request"
    match step:
        case Step.AGREE:
            opening = (
                "Thanks for getting back to me, that answers my question."
                if earlier_question
                else f'Thanks for your email about "{topic}".'
            )
            text = (
                f"Hi,\n\n{opening} We agree, and I'm happy to help. I have signed the document and it is "
                f"attached to this email ({DOCUMENT_FILENAME}). Let me know if you need anything else."
            )
            return Reply(text + sign_off, attach_document=True)
        case Step.CLIENT_QUESTION:
            text = (
                f'Hi,\n\nThanks for reaching out about "{topic}". Before I sign, one question: would a PDF '
                "signed electronically be acceptable, or do you need a wet-ink signature on paper? Our "
                "office can do either, but I'd rather know which one your side accepts before I send it."
            )
            return Reply(text + sign_off, attach_document=False)
        case Step.AGENT_QUESTION:
            text = (
                f'Hi,\n\nI saw your email about "{topic}". Could you remind me what exactly you need from '
                "us and what it is for? Once I know that, I can take care of it today."
            )
            return Reply(text + sign_off, attach_document=False)
        case Step.REFUSE:
            text = (
                f'Hi,\n\nThank you for your email about "{topic}". Unfortunately we won\'t be able to '
                "provide this: our policy does not allow us to share it, so we decline the request. "
                "Please don't expect it from us."
            )
            return Reply(text + f"\n\nRegards,\n{first_name}", attach_document=False)


def signed_document(counterparty: Counterparty) -> bytes:
    """The small PDF an agreeing counterparty attaches."""
    return text_pdf(
        [
            "Signed document",
            "",
            f"Signed by: {counterparty.name} <{counterparty.address}>",
            "Signature: electronically signed",
            "This document was produced by the Caseflow AgentMail simulator.",
        ]
    )

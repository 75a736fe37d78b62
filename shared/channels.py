"""Every NATS channel as the AsyncAPI documents describe it (`make docs`): who sends, who receives, what it carries.

Design decision a reader must know: this is a declarative table read only by deploy/asyncapi.py and the tests,
never by runtime code, so documenting a subject can change nothing a service does. It is kept true by
tests/unit/test_asyncapi.py, which builds every service's broker as its process does and compares what it
subscribes to (subjects, queue groups, durable consumers) with the receivers declared here. Each durable
consumer's parked subject (`parked.<stream>.<consumer>`) is derived, not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

from shared.contracts import agentmail, auth, billing, case, webhook
from shared.contracts.health import HealthReport
from shared.contracts.rpc import Empty
from shared.subjects import (
    AGENTMAIL_EVENTS,
    BACKEND_SERVICES,
    CASE_COMMANDS,
    CASE_EVENTS,
    CASE_TIMERS,
    TIMERS_DUE,
    Consumer,
    Service,
    health_subject,
    parked_subject,
    stream_of,
    timer_schedule_subject,
)


@dataclass(frozen=True, slots=True)
class Channel:
    """One subject. `payload` is a contract type, or "module:Name" for a payload private to one service (the
    generator imports it; shared/ imports no service). A channel with a `reply` is request/reply, answered by
    the queue group of its receiver; one with a `consumer` is read durably through that JetStream consumer;
    any other received channel is heard by every instance of its receivers."""

    subject: str
    payload: type | str
    receivers: tuple[Service, ...] = ()
    senders: tuple[Service, ...] = ()
    reply: object | None = None
    consumer: Consumer | None = None
    description: str = ""


# The payload of a parked channel: whatever the original message carried.
PARKED_PAYLOAD: Final = "(the original message)"


def _rpc(service: Service, subject: str, payload: type, reply: object, description: str = "") -> Channel:
    return Channel(subject, payload, receivers=(service,), reply=reply, description=description)


_COMMANDS: Final = f"Stream {CASE_COMMANDS.name}; Nats-Msg-Id is the command id; relayed from the case's outbox."

CHANNELS: Final[tuple[Channel, ...]] = (
    # ---- request/reply (any service may ask, so requesters are not listed) ----
    *(_rpc(service, health_subject(service), Empty, HealthReport) for service in BACKEND_SERVICES),
    _rpc(Service.AUTH, auth.VERIFY_KEY, auth.VerifyKey, auth.KeyIdentity),
    _rpc(Service.AUTH, auth.WEBHOOK_SECRET, auth.GetWebhookSecret, auth.WebhookSecret),
    _rpc(Service.BILLING, billing.RESERVE, billing.ReserveUnit, billing.Reservation),
    _rpc(Service.BILLING, billing.RELEASE, billing.ReleaseUnit, billing.Released),
    _rpc(Service.BILLING, billing.USAGE, billing.GetUsage, billing.Usage),
    _rpc(Service.BILLING, billing.USAGE_REPORT, billing.GetUsageReport, billing.UsageReport),
    _rpc(Service.CASE, case.CREATE, case.CreateCase, case.CreateCaseResult),
    _rpc(Service.CASE, case.GET, case.GetCase, case.CaseView),
    _rpc(Service.CASE, case.LIST, case.ListCases, case.CasePage),
    _rpc(Service.CASE, case.PROVIDE_INPUT, case.ProvideInput, case.InputAccepted),
    _rpc(Service.CASE, case.CANCEL, case.CaseRef, case.CaseView),
    _rpc(Service.CASE, case.ATTACHMENT, case.GetAttachment, case.AttachmentDownload),
    _rpc(Service.CASE, case.CHECK_OWNER, case.CaseRef, case.OwnerChecked),
    _rpc(Service.AGENTMAIL_ADAPTER, agentmail.SEND, agentmail.SendEmail, agentmail.SendOutcome),
    _rpc(Service.AGENTMAIL_ADAPTER, agentmail.REPLY, agentmail.ReplyEmail, agentmail.SendOutcome),
    _rpc(Service.AGENTMAIL_ADAPTER, agentmail.ATTACHMENT_LINK, agentmail.GetAttachmentLink, agentmail.AttachmentLink),
    _rpc(
        Service.AGENTMAIL_ADAPTER,
        agentmail.TRANSCRIPT,
        agentmail.GetTranscript,
        agentmail.Transcript,
        "The newest messages of the thread that fit TRANSCRIPT_MAX_BYTES (always the newest one), oldest first.",
    ),
    _rpc(Service.AGENTMAIL_ADAPTER, agentmail.INGEST_WEBHOOK, agentmail.IngestWebhook, agentmail.WebhookAccepted),
    _rpc(Service.WEBHOOK, webhook.LIST_DELIVERIES, webhook.ListDeliveries, webhook.WebhookDeliveries),
    _rpc(Service.WEBHOOK, webhook.REDELIVER, webhook.Redeliver, webhook.WebhookDelivery),
    # ---- broadcasts (core NATS, every instance hears them) ----
    Channel(
        auth.KEYS_CHANGED,
        auth.KeysChanged,
        receivers=(Service.GATEWAY,),
        senders=(Service.AUTH,),
        description="Broadcast (core NATS, no queue group) by the admin CLI after a key's status or a client's "
        "plan changed: every gateway evicts the cached identity at once.",
    ),
    # ---- durable commands (CASE_COMMANDS) ----
    Channel(
        case.CMD_CREATED,
        case.CaseCreatedCommand,
        receivers=(Service.CASE,),
        senders=(Service.GATEWAY,),
        consumer=Consumer.CASE_CREATED,
        description=f"`case.cmd.created.<caseId>`: a create is confirmed (its 201 is being answered), so the case "
        f"worker may start it. Stream {CASE_COMMANDS.name}; Nats-Msg-Id `created:<caseId>` (a replay publishes "
        "it again, deduplicated); a case without one is removed by the case service's reconciler.",
    ),
    Channel(
        case.CMD_INPUT_PROVIDED,
        case.InputProvidedCommand,
        receivers=(Service.CASE,),
        senders=(Service.CASE,),
        consumer=Consumer.CASE_INPUT,
        description=f"The client answered the case's input request: the worker resumes the case. {_COMMANDS}",
    ),
    Channel(
        case.CMD_SEND,
        "services.case.model:SendEmailCommand",
        receivers=(Service.CASE,),
        senders=(Service.CASE,),
        consumer=Consumer.CASE_SEND,
        description=f"The worker's own queue of emails to send (payload private to the case service). {_COMMANDS}",
    ),
    Channel(
        case.CMD_JUDGE_REPLY,
        "services.case.model:JudgeReplyCommand",
        receivers=(Service.CASE,),
        senders=(Service.CASE,),
        consumer=Consumer.CASE_JUDGE_REPLY,
        description="The reconciler's request to judge a stored reply that was never judged (payload private "
        f"to the case service). {_COMMANDS}",
    ),
    # ---- case timers (CASE_TIMERS) ----
    Channel(
        timer_schedule_subject("*"),
        "services.case.timers:TimerFired",
        senders=(Service.CASE,),
        description=f"A case's timer (stream {CASE_TIMERS.name}, one message per case): a JetStream message "
        "schedule (`Nats-Schedule: @at <RFC3339>`) that nats-server publishes to "
        f"`{TIMERS_DUE}` when the case's next action is due (payload private to the case service).",
    ),
    Channel(
        TIMERS_DUE,
        "services.case.timers:TimerFired",
        receivers=(Service.CASE,),
        consumer=Consumer.CASE_TIMERS,
        description=f"A case's timer fired by nats-server from its schedule on {CASE_TIMERS.name}: the case worker "
        "applies FollowUpDue (a case not due yet, a stale timer, is left as it is).",
    ),
    # ---- durable events (CASE_EVENTS, AGENTMAIL_EVENTS) ----
    *(
        Channel(
            case.event_subject(event_type),
            case.CaseEvent,
            senders=(Service.CASE,),
            description=f"Case event `{event_type}` for the client's webhook. Stream {CASE_EVENTS.name}; "
            "Nats-Msg-Id is the event id; relayed from the case's outbox.",
        )
        for event_type in get_args(case.EventType)
    ),
    Channel(
        CASE_EVENTS.subjects[0],
        case.CaseEvent,
        receivers=(Service.WEBHOOK,),
        consumer=Consumer.WEBHOOK_CASE_EVENTS,
        description="Every case event, read by the webhook service to deliver it to the client's endpoint.",
    ),
    Channel(
        agentmail.MESSAGE_RECEIVED,
        agentmail.MessageReceived,
        receivers=(Service.CASE,),
        senders=(Service.AGENTMAIL_ADAPTER,),
        consumer=Consumer.CASE_MESSAGES,
        description=f"A verified inbound email on our inbox. Stream {AGENTMAIL_EVENTS.name}; Nats-Msg-Id is "
        "AgentMail's event id (a redelivered webhook publishes nothing new).",
    ),
    Channel(
        agentmail.DELIVERY_EVENT,
        agentmail.DeliveryEvent,
        receivers=(Service.CASE,),
        senders=(Service.AGENTMAIL_ADAPTER,),
        consumer=Consumer.CASE_DELIVERIES,
        description=f"What happened to an email we sent (delivered, bounced, complained, rejected). Stream "
        f"{AGENTMAIL_EVENTS.name}; Nats-Msg-Id is AgentMail's event id.",
    ),
)


def parked_channels(channels: tuple[Channel, ...]) -> list[Channel]:
    """Where ServiceMiddleware parks each durable consumer's poison messages: sent by the consumer's service."""
    parked = []
    for channel in channels:
        stream = stream_of(channel.subject)
        if channel.consumer is None or stream is None:
            continue
        parked.append(
            Channel(
                parked_subject(stream.name, channel.consumer),
                PARKED_PAYLOAD,
                senders=channel.receivers,
                description=f"Messages of {stream.name} whose `{channel.consumer}` handler failed as poison (not an "
                "outage) CONSUMER_MAX_DELIVER times, or permanently, parked by ServiceMiddleware on the PARKED stream "
                "for an operator (`services.auth.admin parked`): the original body unchanged, with "
                "Caseflow-Parked-Subject, -Stream, -Consumer, -Sequence, -Msg-Id, -Reason and -Deliveries headers.",
            )
        )
    return parked


def all_channels() -> tuple[Channel, ...]:
    return (*CHANNELS, *parked_channels(CHANNELS))

"""`make docs`: AsyncAPI 3.0 documents of every NATS subject, stream and payload, generated from the code.

    python -m deploy.asyncapi                 write docs/asyncapi/<service>.yaml and docs/asyncapi/README.md
    python -m deploy.asyncapi --check         exit 1 if the files there differ from what the code generates
    python -m deploy.asyncapi --out DIR       write (or check) DIR instead

Design decisions a reader must know:
- One document per service: AsyncAPI describes an application (what it receives, what it sends), and a service
  is what we deploy and scale. README.md beside them is the combined view: one table row per subject with its
  stream, payload, reply, receivers and senders, so nobody has to read six files to find a subject.
- Each broker is built by the registration functions the service's `__main__` calls, with default settings (never
  the environment: the files must not depend on who runs the command) and without connecting. Subscribers come
  from the handlers; what we publish with raw JetStream calls (the case outbox, the adapter's events, the admin
  CLI's broadcast, parked messages) is declared beside that code with `document_publication`.
- FastStream derives payload schemas with pydantic, which does not know msgspec. `describe_msgspec_to_pydantic`
  lets every msgspec Struct answer pydantic with msgspec's own JSON Schema (the one msgspec validates messages
  against), nested types inlined, so the documented shape is the decoded shape.
- FastStream documents what a subscriber receives, not what it replies: each request/reply subject gets an
  AsyncAPI operation `reply` from its handler's return annotation (`Ok[...]`, plus the `Err` ServiceMiddleware
  answers with), and each durable consumer its stream and consumer name.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Union, cast

import msgspec
import yaml
from faststream.nats import NatsBroker
from faststream.nats.publisher.usecase import LogicPublisher
from faststream.nats.subscriber.usecases.basic import LogicSubscriber
from faststream.specification.asyncapi import AsyncAPI
from pydantic_core import core_schema

from services.agentmail_adapter import __main__ as adapter_main
from services.auth import __main__ as auth_main
from services.billing import __main__ as billing_main
from services.case import __main__ as case_main
from services.gateway.app import create_litestar
from services.webhook import __main__ as webhook_main
from shared.contracts.rpc import Err
from shared.messaging.broker import create_broker
from shared.messaging.jetstream import durable_consumers
from shared.runtime import VERSION
from shared.settings import (
    AgentMailSettings,
    AuthSettings,
    BillingSettings,
    CaseSettings,
    GatewaySettings,
    WebhookSettings,
    load_settings,
)
from shared.subjects import ALL_STREAMS, Service, StreamSpec

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs" / "asyncapi"
INDEX: Final = "README.md"

ROLES: Final = {
    Service.GATEWAY: "The HTTP ingress. On NATS it asks the other services (request/reply), confirms each "
    "create it answers 201 (the created command) and hears KEYS_CHANGED to evict cached API keys.",
    Service.AUTH: "Clients, API keys (keyed hashes only) and webhook signing secrets.",
    Service.BILLING: "Plan caps and per-client, per-UTC-month usage counters.",
    Service.CASE: "The case API, the worker that runs each case, its scheduler and the outbox relay.",
    Service.AGENTMAIL_ADAPTER: "The only code that speaks AgentMail: sends, transcripts, attachments, inbound "
    "webhooks.",
    Service.WEBHOOK: "Signed, retried, recorded deliveries of case events to client endpoints.",
}


# ---- the brokers, wired as each service's __main__ wires them --------------------------------------------------


def gateway_broker() -> NatsBroker:
    settings = load_settings(GatewaySettings, {})
    broker = create_broker(settings, Service.GATEWAY)
    create_litestar(settings, broker)
    return broker


# Each backend service is built exactly as its process builds it (its `__main__.build`), with default settings
# (never the environment, so the documents do not depend on who generates them), and never connected.
BROKERS: Final[dict[Service, Callable[[], NatsBroker]]] = {
    Service.GATEWAY: gateway_broker,
    Service.AUTH: lambda: auth_main.build(load_settings(AuthSettings, {})).broker,
    Service.BILLING: lambda: billing_main.build(load_settings(BillingSettings, {})).broker,
    Service.CASE: lambda: case_main.build(load_settings(CaseSettings, {})).broker,
    Service.AGENTMAIL_ADAPTER: lambda: adapter_main.build(load_settings(AgentMailSettings, {})).broker,
    Service.WEBHOOK: lambda: webhook_main.build(load_settings(WebhookSettings, {})).broker,
}


# ---- msgspec types as pydantic (FastStream's schema engine) sees them ---------------------------------------------


def json_schema(annotation: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of `annotation`, self-contained: nested types inlined, discriminators as AsyncAPI
    writes them (the tag's property name)."""
    (schema,), components = msgspec.json.schema_components([annotation], ref_template="#/$defs/{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(components[node["$ref"].rsplit("/", 1)[1]])
            return {
                key: value["propertyName"] if key == "discriminator" else inline(value) for key, value in node.items()
            }
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    resolved: dict[str, Any] = inline(schema)
    return resolved


def _struct_types(root: type[msgspec.Struct]) -> Iterator[type[msgspec.Struct]]:
    for subclass in root.__subclasses__():
        yield subclass
        yield from _struct_types(subclass)


def describe_msgspec_to_pydantic() -> None:
    """Give every msgspec Struct class loaded so far the pydantic hooks FastStream's schema generation calls."""

    def core(cls: type[msgspec.Struct], _source: Any, _handler: Any) -> core_schema.CoreSchema:
        return core_schema.any_schema()

    def json(cls: type[msgspec.Struct], _core: Any, _handler: Any) -> dict[str, Any]:
        return json_schema(cls)

    for struct in _struct_types(msgspec.Struct):
        struct.__get_pydantic_core_schema__ = classmethod(core)  # type: ignore[attr-defined]
        struct.__get_pydantic_json_schema__ = classmethod(json)  # type: ignore[attr-defined]


# ---- what FastStream does not say: replies, streams, consumers -------------------------------------------------------


def _stream_of(subject: str) -> StreamSpec | None:
    for stream in ALL_STREAMS:
        for pattern in stream.subjects:
            if _subject_matches(pattern, subject):
                return stream
    return None


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    wanted, given = pattern.split("."), subject.split(".")
    for position, part in enumerate(wanted):
        if part == ">":
            return len(given) > position
        if position >= len(given) or part not in ("*", given[position]):
            return False
    return len(given) == len(wanted)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if args := typing.get_args(annotation):
        return f"{_type_name(typing.get_origin(annotation))}[{', '.join(_type_name(arg) for arg in args)}]"
    return str(getattr(annotation, "__name__", annotation))


@dataclass
class Subscription:
    """A subscriber as the code declares it: its subject, its handler's payload and reply types."""

    subject: str
    payload: Any
    reply: Any | None
    queue: str | None


@dataclass
class Publication:
    """A subject the code publishes to, as declared (`document_publication`)."""

    subject: str
    payload: Any | None


def subscriptions(broker: NatsBroker) -> list[Subscription]:
    found = []
    for subscriber in cast("list[LogicSubscriber[Any]]", broker.subscribers):
        handler = subscriber.calls[0].handler._original_call
        hints = typing.get_type_hints(handler)
        returned = hints.pop("return", None)
        payload = next(iter(hints.values()), None)
        reply = None if returned in (None, type(None)) else returned
        # Only core subscribers have a queue group; JetStream consumers are shared by their durable name.
        queue = getattr(subscriber, "queue", "") or None
        found.append(Subscription(subscriber.subject.template, payload, reply, queue))
    return sorted(found, key=lambda subscription: subscription.subject)


def publications(broker: NatsBroker) -> list[Publication]:
    found = [
        Publication(publisher.subject.template, publisher.specification.config.schema_)
        for publisher in cast("list[LogicPublisher]", broker.publishers)
    ]
    return sorted(found, key=lambda publication: publication.subject)


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _channel_key(operation: dict[str, Any]) -> str:
    return urllib.parse.unquote(operation["channel"]["$ref"].removeprefix("#/channels/"))


def _receive_channel(spec: dict[str, Any], subject: str) -> tuple[str, dict[str, Any]] | None:
    """The key of the channel `subject` is received on, and its receive operation."""
    for operation in spec["operations"].values():
        key = _channel_key(operation)
        if operation["action"] == "receive" and spec["channels"][key]["address"] == subject:
            return key, operation
    return None


def add_replies(spec: dict[str, Any], found: list[Subscription]) -> None:
    """An AsyncAPI 3 `reply` on every request/reply operation: the reply goes to the requester's inbox."""
    for subscription in found:
        if subscription.reply is None or (received := _receive_channel(spec, subscription.subject)) is None:
            continue
        key, operation = received
        reply = f"{key}:Reply"
        spec["components"]["schemas"][f"{reply}:Payload"] = json_schema(subscription.reply | Err)
        spec["components"]["messages"][reply] = {
            "title": reply,
            "summary": f"{_type_name(subscription.reply)} with the data, or Err with a code from the error registry.",
            "payload": _ref("components", "schemas", f"{reply}:Payload"),
        }
        spec["channels"][reply] = {
            "address": None,
            "description": "The requester's reply inbox (NATS request/reply).",
            "messages": {"Reply": _ref("components", "messages", reply)},
        }
        operation["reply"] = {
            "channel": _ref("channels", reply),
            "messages": [_ref("channels", reply, "messages", "Reply")],
        }


def add_streams(spec: dict[str, Any], broker: NatsBroker) -> None:
    """Name the stream of every JetStream channel, and the durable consumer of every one this service reads."""
    consumers = {consumer.subject: consumer for consumer in durable_consumers(broker)}
    for channel in spec["channels"].values():
        address = channel["address"]
        stream = _stream_of(address) if address else None
        if stream is None:
            continue
        notes = [f"JetStream stream {stream.name} ({', '.join(stream.subjects)}): {stream.description}"]
        if (consumer := consumers.get(address)) is not None:
            notes.append(
                f"Read by the durable consumer `{consumer.durable}`, shared by every replica: acknowledged after the "
                f"work is stored, redelivered with backoff on failure, parked on "
                f"parked.{consumer.stream}.{consumer.durable} after the last allowed delivery."
            )
        channel["description"] = "\n\n".join(filter(None, [channel.get("description"), *notes]))


# ---- the documents ------------------------------------------------------------------------------------------------


def service_document(service: Service, broker: NatsBroker) -> dict[str, Any]:
    spec: dict[str, Any] = (
        AsyncAPI(broker, title=f"Caseflow {service}", version=VERSION, description=ROLES[service])
        .to_specification()
        .to_jsonable()
    )
    add_replies(spec, subscriptions(broker))
    add_streams(spec, broker)
    # FastStream keeps subscribers in a weak set: order them, so that the same code gives the same file.
    for section in (spec, spec["components"]):
        for name in ("channels", "operations", "messages", "schemas"):
            if name in section:
                section[name] = dict(sorted(section[name].items()))
    return spec


@dataclass
class SubjectRow:
    subject: str
    payload: str = ""
    reply: str = ""
    receivers: set[str] = field(default_factory=set)
    senders: set[str] = field(default_factory=set)


def subject_table(brokers: dict[Service, NatsBroker]) -> list[SubjectRow]:
    """One row per subject: concrete subjects, with every wildcard subscription counted where it matches."""
    rows: dict[str, SubjectRow] = {}
    wildcards: list[tuple[Service, Subscription]] = []
    for service, broker in brokers.items():
        for publication in publications(broker):
            row = rows.setdefault(publication.subject, SubjectRow(publication.subject))
            row.senders.add(service)
            if publication.payload is not None:
                row.payload = _type_name(publication.payload)
        for subscription in subscriptions(broker):
            if ">" in subscription.subject or "*" in subscription.subject.split("."):
                wildcards.append((service, subscription))
                continue
            row = rows.setdefault(subscription.subject, SubjectRow(subscription.subject))
            row.receivers.add(_receiver(service, subscription))
            row.payload = _type_name(subscription.payload)
            row.reply = _type_name(subscription.reply) if subscription.reply is not None else ""
    for service, subscription in wildcards:
        matching = [row for row in rows.values() if _subject_matches(subscription.subject, row.subject)]
        for row in matching or [rows.setdefault(subscription.subject, SubjectRow(subscription.subject))]:
            row.receivers.add(_receiver(service, subscription))
            row.payload = row.payload or _type_name(subscription.payload)
    return [rows[subject] for subject in sorted(rows)]


def _receiver(service: Service, subscription: Subscription) -> str:
    if subscription.queue:
        return f"{service} (queue group)"
    if (stream := _stream_of(subscription.subject)) is not None:
        return f"{service} (durable, {stream.name})"
    return f"{service} (every instance)"


def index(brokers: dict[Service, NatsBroker]) -> str:
    lines = [
        "# Caseflow NATS subjects",
        "",
        "Generated by `make docs` (`python -m deploy.asyncapi`) from the code; a test fails when these files are",
        "stale. Each service has its AsyncAPI 3.0 document here (`<service>.yaml`); this table is the combined view.",
        "",
        "- A subject received by a *queue group* is request/reply: one replica answers, with `Ok` carrying the data",
        "  (the reply column) or `Err` carrying a code from the error registry (`shared/errors.py`). Any service may",
        "  ask, so requesters are not listed.",
        "- A *durable* subject is on a JetStream stream, read through a durable consumer shared by every replica;",
        "  a message that keeps failing is parked on `parked.<stream>.<consumer>` with its original body.",
        "- *Every instance* hears a broadcast (no queue group).",
        "",
        "## Streams",
        "",
        "| stream | subjects | kept | description |",
        "|---|---|---|---|",
        *(
            f"| {s.name} | {', '.join(f'`{p}`' for p in s.subjects)} | {s.max_age_seconds / 86_400:g} days | "
            f"{s.description} |"
            for s in ALL_STREAMS
        ),
        "",
        "## Subjects",
        "",
        "| subject | stream | payload | reply | received by | sent by |",
        "|---|---|---|---|---|---|",
    ]
    for row in subject_table(brokers):
        stream = _stream_of(row.subject)
        cells = [
            f"`{row.subject}`",
            stream.name if stream else "core NATS",
            row.payload or "original message",
            row.reply or "-",
            ", ".join(sorted(row.receivers)) or "-",
            ", ".join(sorted(row.senders)) or "-",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", "## Documents", "", *(f"- [{service}]({service}.yaml): {ROLES[service]}" for service in brokers), ""]
    return "\n".join(lines)


def render() -> dict[str, str]:
    """Every file of docs/asyncapi by name, as the code describes it now."""
    brokers = {service: build() for service, build in BROKERS.items()}
    describe_msgspec_to_pydantic()
    documents = {service: service_document(service, broker) for service, broker in brokers.items()}
    files = {
        f"{service}.yaml": "# Generated by `make docs` (python -m deploy.asyncapi); do not edit by hand.\n"
        + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
        for service, document in documents.items()
    }
    files[INDEX] = index(brokers)
    return files


def stale_files(out: Path, files: dict[str, str]) -> list[str]:
    """What differs between `out` and `files`, as unified diffs (files out there that we would not write count)."""
    problems = []
    for name, text in files.items():
        path = out / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), f"{path} (committed)", f"{path} (code)"
            )
            problems.append("\n".join(list(diff)[:40]))
    problems += [f"{path} is not generated any more" for path in sorted(out.glob("*")) if path.name not in files]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.asyncapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS, help=f"directory of the documents (default: {DOCS})")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the documents are stale")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        problems = stale_files(args.out, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("The AsyncAPI documents are stale: run `make docs` and commit docs/asyncapi.", file=sys.stderr)
        return 1 if problems else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {', '.join(sorted(files))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

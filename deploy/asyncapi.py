"""`make docs`: AsyncAPI 3.0 documents of every NATS subject, stream and payload, generated from shared/channels.py.

    python -m deploy.asyncapi                 write docs/asyncapi/<service>.yaml and docs/asyncapi/README.md
    python -m deploy.asyncapi --check         exit 1 if the files there differ from what the code generates
    python -m deploy.asyncapi --out DIR       write (or check) DIR instead

Design decisions a reader must know:
- The source is the declarative channel table (shared/channels.py), which no runtime code reads; a test keeps it
  true to what each service's broker subscribes to. Nothing here builds a broker or touches FastStream.
- One document per service: AsyncAPI describes an application (what it receives, what it sends), and a service
  is what we deploy and scale. README.md beside them is the combined view: one table row per subject with its
  stream, payload, reply, receivers and senders, so nobody has to read six files to find a subject.
- Payload schemas are msgspec's own JSON Schema (`msgspec.json.schema_components`, the one msgspec validates
  messages against), nested types inlined, so the documented shape is the decoded shape. Each request/reply
  subject has an AsyncAPI operation `reply`: `Ok` with the data, or the `Err` ServiceMiddleware answers with.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Union, cast

import msgspec
import yaml

from shared.channels import PARKED_PAYLOAD, Channel, all_channels
from shared.contracts.rpc import Err, Ok
from shared.runtime import VERSION
from shared.subjects import ALL_STREAMS, Service, parked_subject, stream_of, subject_matches

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


# ---- payload schemas -------------------------------------------------------------------------------------------


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


def payload_type(channel: Channel) -> type:
    """The channel's payload type; a payload private to a service is named "module:Name" in the table."""
    if isinstance(channel.payload, str):
        module, name = channel.payload.split(":")
        resolved: type = getattr(importlib.import_module(module), name)
        return resolved
    return channel.payload


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is Union:
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if args := typing.get_args(annotation):
        return f"{_type_name(typing.get_origin(annotation))}[{', '.join(_type_name(arg) for arg in args)}]"
    return str(getattr(annotation, "__name__", annotation))


# ---- the documents ------------------------------------------------------------------------------------------------


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(urllib.parse.quote(part, safe=".:_-") for part in path)}


def _channel_description(channel: Channel, service: Service) -> str:
    notes = [channel.description]
    if (stream := stream_of(channel.subject)) is not None:
        notes.append(f"JetStream stream {stream.name} ({', '.join(stream.subjects)}): {stream.description}")
    if channel.consumer is not None and stream is not None and service in channel.receivers:
        notes.append(
            f"Read by the durable consumer `{channel.consumer}`, shared by every replica: acknowledged after the "
            f"work is stored, redelivered with backoff on failure, parked on "
            f"{parked_subject(stream.name, channel.consumer)} after the last allowed delivery."
        )
    return "\n\n".join(filter(None, notes))


def service_document(service: Service) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for channel in all_channels():
        actions = [
            action
            for action, services in (("receive", channel.receivers), ("send", channel.senders))
            if service in services
        ]
        if not actions:
            continue
        key = channel.subject
        if channel.payload == PARKED_PAYLOAD:
            name = "ParkedMessage"
            schema: dict[str, Any] = {"description": "The parked message's original body, unchanged."}
        else:
            payload = payload_type(channel)
            name = payload.__name__
            schema = json_schema(payload)
        schemas[f"{name}:Payload"] = schema
        messages[name] = {"name": name, "title": name, "payload": _ref("components", "schemas", f"{name}:Payload")}
        entry: dict[str, Any] = {"address": channel.subject}
        if description := _channel_description(channel, service):
            entry["description"] = description
        entry["messages"] = {name: _ref("components", "messages", name)}
        channels[key] = entry
        for action in actions:
            operation: dict[str, Any] = {
                "action": action,
                "channel": _ref("channels", key),
                "messages": [_ref("channels", key, "messages", name)],
            }
            if action == "receive" and channel.reply is not None:
                operation["reply"] = _reply(channel, channels, messages, schemas)
            operations[f"{key}:{action}"] = operation
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": f"Caseflow {service}", "version": VERSION, "description": ROLES[service]},
        "defaultContentType": "application/json",
        "servers": {"development": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": dict(sorted(channels.items())),
        "operations": dict(sorted(operations.items())),
        "components": {"messages": dict(sorted(messages.items())), "schemas": dict(sorted(schemas.items()))},
    }
    return document


def _reply(
    channel: Channel, channels: dict[str, Any], messages: dict[str, Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    """An AsyncAPI 3 `reply`: `Ok[reply]` or `Err`, sent to the requester's inbox."""
    assert channel.reply is not None
    reply = f"{channel.subject}:Reply"
    schemas[f"{reply}:Payload"] = json_schema(cast("Any", Ok)[channel.reply] | Err)
    messages[reply] = {
        "title": reply,
        "summary": f"Ok[{_type_name(channel.reply)}] with the data, or Err with a code from the error registry.",
        "payload": _ref("components", "schemas", f"{reply}:Payload"),
    }
    channels[reply] = {
        "address": None,
        "description": "The requester's reply inbox (NATS request/reply).",
        "messages": {"Reply": _ref("components", "messages", reply)},
    }
    return {"channel": _ref("channels", reply), "messages": [_ref("channels", reply, "messages", "Reply")]}


@dataclass
class SubjectRow:
    subject: str
    payload: str = ""
    reply: str = ""
    receivers: set[str] = field(default_factory=set)
    senders: set[str] = field(default_factory=set)


def _receiver(service: Service, channel: Channel) -> str:
    if channel.reply is not None:
        return f"{service} (queue group)"
    if channel.consumer is not None and (stream := stream_of(channel.subject)) is not None:
        return f"{service} (durable, {stream.name})"
    return f"{service} (every instance)"


def subject_table(channels: tuple[Channel, ...]) -> list[SubjectRow]:
    """One row per subject: concrete subjects, with every wildcard subscription counted where it matches."""
    rows: dict[str, SubjectRow] = {}
    wildcards: list[Channel] = []
    for channel in channels:
        if channel.receivers and not channel.senders and (">" in channel.subject or "*" in channel.subject.split(".")):
            wildcards.append(channel)
            continue
        row = rows.setdefault(channel.subject, SubjectRow(channel.subject))
        row.senders.update(str(service) for service in channel.senders)
        row.receivers.update(_receiver(service, channel) for service in channel.receivers)
        if channel.payload != PARKED_PAYLOAD:
            row.payload = payload_type(channel).__name__
        row.reply = f"Ok[{_type_name(channel.reply)}]" if channel.reply is not None else ""
    for channel in wildcards:
        matching = [row for row in rows.values() if subject_matches(channel.subject, row.subject)]
        for row in matching or [rows.setdefault(channel.subject, SubjectRow(channel.subject))]:
            row.receivers.update(_receiver(service, channel) for service in channel.receivers)
            row.payload = row.payload or payload_type(channel).__name__
    return [rows[subject] for subject in sorted(rows)]


def index() -> str:
    lines = [
        "# Caseflow NATS subjects",
        "",
        "Generated by `make docs` (`python -m deploy.asyncapi`) from shared/channels.py; a test fails when these",
        "files are stale. Each service has its AsyncAPI 3.0 document here (`<service>.yaml`); this table is the",
        "combined view.",
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
    for row in subject_table(all_channels()):
        stream = stream_of(row.subject)
        cells = [
            f"`{row.subject}`",
            stream.name if stream else "core NATS",
            row.payload or "original message",
            row.reply or "-",
            ", ".join(sorted(row.receivers)) or "-",
            ", ".join(sorted(row.senders)) or "-",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", "## Documents", "", *(f"- [{service}]({service}.yaml): {ROLES[service]}" for service in Service), ""]
    return "\n".join(lines)


def render() -> dict[str, str]:
    """Every file of docs/asyncapi by name, as the channel table describes it now."""
    files = {
        f"{service}.yaml": "# Generated by `make docs` (python -m deploy.asyncapi); do not edit by hand.\n"
        + yaml.safe_dump(service_document(service), sort_keys=False, allow_unicode=True, width=120)
        for service in Service
    }
    files[INDEX] = index()
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

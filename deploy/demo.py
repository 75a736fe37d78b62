"""`make demo`: one case per scripted counterparty against a running `make run`, followed live to the end.

It uses the local development client's key (created by `make run` in `.data/dev-client.json`, or
`CASEFLOW_API_KEY`), answers the `ask` counterparty's input request the way a client app would, and shows a
table of every case's status, result and the number of emails its counterparty received (read from the
AgentMail simulator's outbox). The design decision: progress is shown the way the output can take it. On a
terminal the table is redrawn in place (rich's Live display) while the cases run; piped or logged, each status
change is printed as one line as it happens; either way the final table follows. The silent counterparty
finishes (max_retries) only when follow-ups are fast: run the stack with `FOLLOW_UP_HOUR_SECONDS=1 make run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CASEFLOW_DATA", ROOT / ".data"))
COUNTERPARTIES = ("agree", "ask", "chat", "refuse", "silent", "bounce", "complain", "reject")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
STATUS_STYLES = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow", "INPUT_NEEDED": "magenta"}
HUMAN_ANSWER = "Yes, a PDF signed electronically is fine; no paper copy is needed."


@dataclass
class Tracked:
    behaviour: str
    address: str
    case_id: str
    case: dict[str, Any] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)


def api_key() -> str:
    key = os.environ.get("CASEFLOW_API_KEY")
    if key:
        return key
    dev_client = DATA / "dev-client.json"
    if not dev_client.exists():
        sys.exit("make demo: no API key; start the stack with `make run` first (it creates .data/dev-client.json)")
    return str(json.loads(dev_client.read_text())["apiKey"])


def case_body(behaviour: str, address: str) -> dict[str, Any]:
    return {
        "clientReferenceId": f"demo-{behaviour}",
        "channel": "EMAIL",
        "maxAttempts": 2,
        # Longer than the simulator's reply delay (3 s) once FOLLOW_UP_HOUR_SECONDS=1: replies beat follow-ups.
        "followUpDelayHours": 5,
        "goal": {
            "objective": "Collect a signed W-9 from the vendor",
            "knowledge": {"vendorName": "Northstar Supplies", "reason": "AP onboarding", "dueDate": "2026-12-15"},
        },
        "counterparty": {"address": address, "name": f"{behaviour.capitalize()} Vendor", "timezone": "Europe/Paris"},
        "senderPersona": {"name": "Avery", "role": "Accounts Payable", "company": "Example Corp"},
        "constraints": ["Email only", "Do not mention legal action"],
        "resultSchema": {
            "type": "object",
            "properties": {
                "signedW9Received": {"type": "boolean"},
                "receivedAt": {"type": "string", "format": "date-time"},
                "documents": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["signedW9Received"],
        },
        "metadata": {"demo": True},
    }


def render(rows: list[Tracked], emails: dict[str, int], *, elapsed: float) -> Table:
    table = Table(title=f"Caseflow demo, {elapsed:.0f} s", title_justify="left")
    table.add_column("counterparty")
    table.add_column("status")
    table.add_column("resultStatus")
    table.add_column("emails", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("result", overflow="fold")
    for row in rows:
        case = row.case
        status = case.get("status", "?")
        result = json.dumps(case.get("result")) if case.get("result") is not None else ""
        table.add_row(
            row.behaviour,
            Text(status, style=STATUS_STYLES.get(status, "")),
            case.get("resultStatus") or "",
            str(emails.get(row.address, 0)),
            str(case.get("attemptCount", 0)),
            result[:80],
        )
    return table


class StatusChanges:
    """Progress for output that is not a terminal: one line per status change, as it is seen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seen: dict[str, str] = {}

    def show(self, rows: list[Tracked], elapsed: float) -> None:
        for row in rows:
            status = row.case.get("status", "?")
            before = self.seen.get(row.case_id)
            if status != before:
                change = f"{before} -> {status}" if before else status
                self.console.print(f"{elapsed:6.1f}s  {row.behaviour:<9} {change}", highlight=False)
                self.seen[row.case_id] = status


def poll(http: httpx.Client, sim: httpx.Client, simulator: str, rows: list[Tracked], emails: dict[str, int]) -> None:
    """Refresh every case, answer a pending input request once, and count each counterparty's emails."""
    for row in rows:
        row.case = http.get(f"/cases/{row.case_id}").json()["data"]
        request = row.case.get("inputRequest")
        if row.case["status"] == "INPUT_NEEDED" and request and request["id"] not in row.answered:
            http.post(
                f"/cases/{row.case_id}/input",
                json={"inputRequestId": request["id"], "providedContext": HUMAN_ANSWER},
            )
            row.answered.add(request["id"])
        emails[row.address] = sim.get(f"{simulator}/_sim/outbox", params={"to": row.address}).json()["count"]


def main() -> None:
    gateway = os.environ.get("CASEFLOW_URL", f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}")
    simulator = os.environ.get("AGENTMAIL_BASE_URL", "http://127.0.0.1:8025").rstrip("/")
    timeout = float(os.environ.get("DEMO_TIMEOUT_SECONDS", "120"))
    poll_seconds = float(os.environ.get("DEMO_POLL_SECONDS", "0.5"))
    headers = {"x-api-key": api_key()}
    run = uuid.uuid4().hex[:6]
    console = Console()
    with httpx.Client(base_url=gateway, headers=headers, timeout=15) as http, httpx.Client(timeout=15) as sim:
        rows = []
        for behaviour in COUNTERPARTIES:
            address = f"{behaviour}.demo{run}@sim.example"
            response = http.post("/cases", json=case_body(behaviour, address), headers={"Idempotency-Key": address})
            if response.status_code != 201:
                sys.exit(f"make demo: creating the {behaviour} case failed: {response.status_code} {response.text}")
            rows.append(Tracked(behaviour, address, response.json()["data"]["caseId"]))
        console.print(f"Created {len(rows)} cases on {gateway}; following them (up to {timeout:.0f}s)...\n")
        started = time.monotonic()
        emails: dict[str, int] = {}
        changes = StatusChanges(console)
        # On a terminal the table redraws in place; otherwise Live would print only its last frame.
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        with live or contextlib.nullcontext():
            while True:
                poll(http, sim, simulator, rows, emails)
                elapsed = time.monotonic() - started
                done = all(row.case["status"] in TERMINAL for row in rows)
                if live is not None:
                    live.update(render(rows, emails, elapsed=elapsed), refresh=True)
                else:
                    changes.show(rows, elapsed)
                if done or elapsed > timeout:
                    break
                time.sleep(poll_seconds)
        if live is None:
            console.print()
            console.print(render(rows, emails, elapsed=elapsed))
        if not done:
            console.print("\nSome cases are still open (the silent one needs FOLLOW_UP_HOUR_SECONDS=1 make run).")


if __name__ == "__main__":
    main()

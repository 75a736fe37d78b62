"""`make demo`: one case per scripted counterparty against a running `make run`, followed live to the end.

It uses the local development client's key (created by `make run` in `.data/dev-client.json`, or
`CASEFLOW_API_KEY`), answers the `ask` counterparty's input request the way a client app would, and prints
a table of final statuses, results and the number of emails each counterparty received (read from the
AgentMail simulator's outbox). The silent counterparty finishes (max_retries) only when follow-ups are
fast: run the stack with `FOLLOW_UP_HOUR_SECONDS=1 make run` to see it end within the demo.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CASEFLOW_DATA", ROOT / ".data"))
COUNTERPARTIES = ("agree", "ask", "chat", "refuse", "silent", "bounce", "complain", "reject")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
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


def render(rows: list[Tracked], emails: dict[str, int]) -> str:
    header = f"{'counterparty':<12} {'status':<13} {'resultStatus':<16} {'emails':>6} {'attempts':>8}  result"
    lines = [header, "-" * len(header)]
    for row in rows:
        case = row.case
        result = json.dumps(case.get("result")) if case.get("result") is not None else ""
        lines.append(
            f"{row.behaviour:<12} {case.get('status', '?'):<13} {case.get('resultStatus') or '':<16} "
            f"{emails.get(row.address, 0):>6} {case.get('attemptCount', 0):>8}  {result[:60]}"
        )
    return "\n".join(lines)


def main() -> None:
    gateway = os.environ.get("CASEFLOW_URL", f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}")
    simulator = os.environ.get("AGENTMAIL_BASE_URL", "http://127.0.0.1:8025").rstrip("/")
    timeout = float(os.environ.get("DEMO_TIMEOUT_SECONDS", "120"))
    headers = {"x-api-key": api_key()}
    run = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=gateway, headers=headers, timeout=15) as http, httpx.Client(timeout=15) as sim:
        rows = []
        for behaviour in COUNTERPARTIES:
            address = f"{behaviour}.demo{run}@sim.example"
            response = http.post("/cases", json=case_body(behaviour, address), headers={"Idempotency-Key": address})
            if response.status_code != 201:
                sys.exit(f"make demo: creating the {behaviour} case failed: {response.status_code} {response.text}")
            rows.append(Tracked(behaviour, address, response.json()["data"]["caseId"]))
        print(f"Created {len(rows)} cases on {gateway}; following them (up to {timeout:.0f}s)...\n", flush=True)
        deadline = time.monotonic() + timeout
        interactive = sys.stdout.isatty()
        emails: dict[str, int] = {}
        while True:
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
            table = render(rows, emails)
            done = all(row.case["status"] in TERMINAL for row in rows)
            if interactive:
                print("\033[H\033[J" + table, flush=True)
            if done or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if not interactive:
            print(table)
        if not done:
            print("\nSome cases are still open (the silent one needs FOLLOW_UP_HOUR_SECONDS=1 make run).")


if __name__ == "__main__":
    main()

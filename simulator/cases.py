"""An example case body (the API's create request) addressed to one of the simulator's counterparties.

Design decision: one example, shared by the tests, the bench and demos, so every measurement and every test
creates the same realistic case; callers override only what they are about (`example_case_body(maxAttempts=1)`).
The default counterparty is `silent-maya@sim.example`, who never answers (simulator/agentmail/counterparties.py).
"""

from __future__ import annotations

import uuid
from typing import Any


def case_body(**overrides: Any) -> dict[str, Any]:
    """A fresh create body (a new clientReferenceId each call) with `overrides` applied at the top level."""
    body: dict[str, Any] = {
        "clientReferenceId": f"ref-{uuid.uuid4().hex[:8]}",
        "channel": "EMAIL",
        "maxAttempts": 3,
        "followUpDelayHours": 72,
        "goal": {
            "objective": "Collect a signed W-9 from the vendor",
            "knowledge": {"vendorName": "Northstar Supplies", "reason": "AP onboarding"},
        },
        "counterparty": {
            "address": "silent-maya@sim.example",
            "name": "Maya Chen",
            "company": "Northstar Supplies",
            "timezone": "America/Los_Angeles",
            "customData": {"vendorId": "vendor_2048"},
        },
        "senderPersona": {"name": "Avery", "role": "Accounts Payable", "company": "Example Corp"},
        "constraints": ["Email only", "Do not mention legal action"],
        "resultSchema": {
            "type": "object",
            "properties": {"signedW9Received": {"type": "boolean"}},
            "required": ["signedW9Received"],
        },
        "metadata": {"vendorId": "vendor_2048"},
    }
    body.update(overrides)
    return body

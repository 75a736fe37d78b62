"""Helpers for end-to-end API tests: clients and keys through the real admin CLI, case bodies, extra gateways."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from deploy.processes import ManagedProcess, Stack, free_port, wait_for_port

# Every secret the admin CLI printed during the session: the log scan checks none of them was logged.
ISSUED_SECRETS: list[str] = []


def admin(stack: Stack, *args: str) -> dict[str, Any]:
    """Run `python -m services.auth.admin ...` against the stack (Stack.admin), remembering the secrets it printed."""
    output = stack.admin(*args)
    ISSUED_SECRETS.extend(str(output[k]) for k in ("apiKey", "webhookSecret", "secret") if output.get(k))
    return output


def new_client(stack: Stack, *, plan: str = "unlimited") -> dict[str, Any]:
    return admin(stack, "create-client", "--name", f"test-{uuid.uuid4().hex[:8]}", "--plan", plan)


def headers(api_key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": api_key, **extra}


# How many times a client retries a shed create (503 with Retry-After) before the test gives up on the stack.
SHED_RETRIES = 30


async def create_as_a_client(
    api: httpx.AsyncClient, body: Mapping[str, Any], key: Mapping[str, str], *, idempotency_key: str
) -> str:
    """POST /cases as a well-behaved client does: a 503 is load shed or an answer that came too late (its
    Retry-After says when to come back), so it is sent again under the same Idempotency-Key, which makes the
    retry safe; a 409 IDEMPOTENCY_KEY_IN_USE means that an earlier attempt may still store its case, and its
    Retry-After says when the key may be taken over. Returns the case id of the 201; any other answer fails the
    test. For tests whose subject is not overload (a loaded two-core machine sheds some of many creates, as the
    contract allows)."""
    keyed = {**key, "Idempotency-Key": idempotency_key}
    for _ in range(SHED_RETRIES):
        response = await api.post("/cases", json=body, headers=keyed)
        in_use = response.status_code == 409 and response.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"
        if response.status_code != 503 and not in_use:
            break
        await asyncio.sleep(float(response.headers["retry-after"]))
    assert response.status_code == 201, response.text
    case_id: str = response.json()["data"]["caseId"]
    return case_id


class ExtraReplica:
    """Another replica of a backend service on the same NATS and MongoDB (e.g. a second case service)."""

    def __init__(self, stack: Stack, service: str, *, name: str, overrides: Mapping[str, str] | None = None) -> None:
        env = {**stack.env, **(overrides or {})}
        self.process = ManagedProcess(
            name, [sys.executable, "-m", f"services.{service}"], env=env, log_dir=stack.log_dir
        )

    def __enter__(self) -> ExtraReplica:
        self.process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()


class ExtraGateway:
    """Another gateway process on the same NATS and MongoDB (gateways are stateless replicas)."""

    def __init__(self, stack: Stack, overrides: Mapping[str, str], *, name: str) -> None:
        self.port = free_port()
        env = {**stack.env, **overrides, "GATEWAY_PORT": str(self.port)}
        self.process = ManagedProcess(name, [sys.executable, "-m", "services.gateway"], env=env, log_dir=stack.log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ExtraGateway:
        self.process.start()
        assert self.process.process is not None
        wait_for_port(self.port, process=self.process.process)
        httpx.get(f"{self.url}/healthz", timeout=10).raise_for_status()
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()

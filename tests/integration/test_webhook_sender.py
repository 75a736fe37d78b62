"""One webhook attempt against real HTTP receivers on loopback: the connection goes to the address the SSRF
guard checked (never to a second DNS answer), TLS is still verified against the URL's hostname, redirects are
not followed, and every failure comes back as a status or an error, never an exception.

Names under `.test` exist in no DNS, so a request that reaches a receiver through one can only have gone to the
pinned address from the resolver passed in.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import free_port
from services.webhook.domain import AttemptResult
from services.webhook.sender import WebhookSender
from services.webhook.ssrf import Resolver
from tests.support.receivers import Receivers, Reply, self_signed_certificate

BODY = b'{"event_id":"evt_1"}'
HEADERS = {"webhook-id": "evt_1"}


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    opened = Receivers()
    yield opened
    opened.close()


def counting_resolver(answers: dict[str, list[str]], calls: list[str]) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    return resolve


async def send(
    url: str, resolver: Resolver, *, verify: ssl.SSLContext | bool = True, timeout: float = 5.0
) -> AttemptResult:
    sender = WebhookSender(timeout_seconds=timeout, allow_private=True, resolver=resolver, verify=verify)
    try:
        return await sender.send(url, BODY, HEADERS)
    finally:
        await sender.close()


async def test_the_request_goes_to_the_checked_address_with_the_original_host(receivers: Receivers) -> None:
    receiver = receivers.open()
    calls: list[str] = []
    url = receiver.url(host="hooks.caseflow.test")
    result = await send(url, counting_resolver({"hooks.caseflow.test": ["127.0.0.1"]}, calls))
    assert (result.status, result.error) == (200, None)
    assert calls == ["hooks.caseflow.test"]
    [request] = receiver.received
    assert request.headers["host"] == f"hooks.caseflow.test:{receiver.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "evt_1"
    assert request.body == BODY


async def test_an_address_that_refuses_the_connection_falls_back_to_the_next_checked_one(receivers: Receivers) -> None:
    receiver = receivers.open()
    calls: list[str] = []
    # Nothing listens on 127.0.0.2 (the receiver binds 127.0.0.1 only): like an IPv6 answer with no IPv6 route.
    resolver = counting_resolver({"dual.caseflow.test": ["127.0.0.2", "127.0.0.1"]}, calls)
    result = await send(receiver.url(host="dual.caseflow.test"), resolver)
    assert result.status == 200
    assert calls == ["dual.caseflow.test"]
    assert len(receiver.received) == 1


async def test_https_is_verified_against_the_url_hostname_while_pinned(receivers: Receivers, tmp_path: Path) -> None:
    tls = self_signed_certificate(tmp_path, "hooks.caseflow.test")
    receiver = receivers.open(tls=tls)
    trust = ssl.create_default_context(cafile=str(tls.certfile))
    answers = {"hooks.caseflow.test": ["127.0.0.1"], "other.caseflow.test": ["127.0.0.1"]}

    good = await send(receiver.url(host="hooks.caseflow.test"), counting_resolver(answers, []), verify=trust)
    assert (good.status, good.error) == (200, None)
    assert receiver.received[0].headers["host"] == f"hooks.caseflow.test:{receiver.port}"

    # Same address, another name: the certificate does not match it, so nothing is sent.
    wrong = await send(receiver.url(host="other.caseflow.test"), counting_resolver(answers, []), verify=trust)
    assert wrong.status is None
    assert wrong.error == "connection failed"
    assert wrong.detail is not None
    assert "Hostname mismatch" in wrong.detail
    assert len(receiver.received) == 1


async def test_a_redirect_is_reported_and_not_followed(receivers: Receivers) -> None:
    elsewhere = receivers.open()
    redirecting = receivers.open(default=Reply(302, location=elsewhere.url()))
    result = await send(redirecting.url(), counting_resolver({"127.0.0.1": ["127.0.0.1"]}, []))
    assert (result.status, result.error) == (302, "HTTP 302: redirects are not followed")
    assert elsewhere.received == []


async def test_timeouts_and_refused_connections_are_errors_with_a_latency(receivers: Receivers) -> None:
    slow = receivers.open(default=Reply(200, delay_seconds=3))
    timed_out = await send(slow.url(), counting_resolver({}, []), timeout=0.5)
    assert (timed_out.status, timed_out.error, timed_out.detail) == (None, "timeout", "no response within 0.5 s")
    assert timed_out.latency_ms >= 500

    refused = await send(f"http://127.0.0.1:{free_port()}/hook", counting_resolver({}, []))
    assert refused.status is None
    assert refused.error == "connection failed"
    assert refused.detail is not None
    assert refused.detail.startswith("ConnectError")
    assert refused.refused is False  # a network failure is retried; only the SSRF guard refuses for good

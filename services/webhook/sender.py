"""One HTTP attempt of a webhook: resolve and check the destination, POST the signed body, classify the answer.

Design decision: the whole attempt (DNS, connect, request, response headers) has one deadline,
WEBHOOK_TIMEOUT_SECONDS, because the contract is "any 2xx within 10 s"; httpx's own timeouts apply per
operation only. Redirects are never followed, proxies from the environment are ignored (a proxy would resolve
the name itself and undo the SSRF pinning), and connections are not kept alive, so a TLS connection verified
for one client's hostname is never reused for another hostname on the same address.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping

import httpx

from services.webhook.domain import (
    CONNECTION_FAILED,
    DESTINATION_NOT_ALLOWED,
    TIMEOUT,
    AttemptResult,
    failure_description,
)
from services.webhook.ssrf import (
    Destination,
    DestinationRefused,
    LookupFailed,
    Resolver,
    resolve_destination,
    system_resolver,
)
from shared.runtime import VERSION

USER_AGENT = f"Caseflow-Webhooks/{VERSION}"


class WebhookSender:
    def __init__(
        self,
        *,
        timeout_seconds: float,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.allow_private = allow_private
        self.resolver = resolver
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=verify,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        started = time.monotonic()

        def result(
            status: int | None, error: str | None, detail: str | None, *, refused: bool = False
        ) -> AttemptResult:
            latency_ms = int((time.monotonic() - started) * 1000)
            return AttemptResult(status=status, error=error, latency_ms=latency_ms, refused=refused, detail=detail)

        try:
            async with asyncio.timeout(self.timeout_seconds):
                destination = await resolve_destination(url, allow_private=self.allow_private, resolver=self.resolver)
                status = await self._post(destination, body, headers)
        except DestinationRefused as exc:
            return result(None, DESTINATION_NOT_ALLOWED, str(exc), refused=True)
        except LookupFailed as exc:
            # Said like a refusal: "this name does not exist" vs "this name is internal" would be a probe.
            return result(None, DESTINATION_NOT_ALLOWED, str(exc))
        except (TimeoutError, httpx.TimeoutException):
            return result(None, TIMEOUT, f"no response within {self.timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return result(None, CONNECTION_FAILED, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if 200 <= status < 300:
            return result(status, None, None)
        return result(status, failure_description(status), None)

    async def _post(self, destination: Destination, body: bytes, headers: Mapping[str, str]) -> int:
        """POST to the checked addresses in turn until one accepts the connection; returns the HTTP status."""
        last_error: httpx.ConnectError | None = None
        for address in destination.addresses:
            url, host_header, extensions = destination.pinned(address)
            try:
                # Streamed and closed unread: the status is all we need, and a huge body cannot exhaust memory.
                async with self.client.stream(
                    "POST", url, content=body, headers={**headers, **host_header}, extensions=extensions
                ) as response:
                    return response.status_code
            except httpx.ConnectError as exc:
                # Nothing was sent to this address; the next one (e.g. IPv4 after IPv6) may answer.
                last_error = exc
        assert last_error is not None
        raise last_error

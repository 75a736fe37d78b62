"""How a process reaches NATS: NATS_URL and credentials as nats-py wants them, the live client, start-up connect.

Design decision: credentials written into NATS_URL itself win over NATS_USER/NATS_PASSWORD, and without either a
service connects as its own name with its development password (deploy/nats_config.py gives nats-server the
same), so a local stack needs no secrets configured.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any, Final

import nats.errors
from faststream.exceptions import IncorrectState
from faststream.nats import NatsBroker
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NatsClient

from shared.settings import CommonSettings, dev_nats_password

log = logging.getLogger("caseflow.messaging")

# Replies to this process's requests arrive on `_INBOX.<token>.<n>` (nats-py's default; create_broker keeps it).
REPLY_INBOX_PREFIX: Final = DEFAULT_INBOX_PREFIX.decode() + "."


def nats_servers(nats_url: str) -> list[str]:
    """NATS_URL as nats-py wants it: a cluster is given as a comma-separated list of server URLs, all of which a
    client knows from the start, so it connects (and reconnects) to whichever node is up."""
    return [server.strip() for server in nats_url.split(",") if server.strip()]


def nats_credentials(settings: CommonSettings, default_user: str) -> tuple[str, str]:
    """(user, password) this process connects with: NATS_USER/NATS_PASSWORD, else `default_user` (the service's
    name) with its development password (deploy/nats_config.py gives nats-server the same)."""
    user = settings.nats_user or default_user
    return user, settings.nats_password or dev_nats_password(user)


def nats_connect_options(settings: CommonSettings, default_user: str) -> dict[str, Any]:
    """Servers and credentials for nats-py's connect (and FastStream's NatsBroker). Credentials written into
    NATS_URL itself (`nats://user:password@host:4222`, the tests' own user) win over NATS_USER/NATS_PASSWORD."""
    servers = nats_servers(settings.nats_url)
    if any(urllib.parse.urlsplit(server).username for server in servers):
        return {"servers": servers}
    user, password = nats_credentials(settings, default_user)
    return {"servers": servers, "user": user, "password": password}


def nats_client(broker: NatsBroker) -> NatsClient | None:
    """The broker's live nats-py client, or None before it has connected."""
    try:
        return broker.connection
    except IncorrectState:
        return None


async def flush_to_server(client: NatsClient, *, timeout_seconds: float = 10.0) -> None:
    """Return once nats-server has processed everything `client` sent before the call: the SUBs of subscribers
    just started (a request from any connection then finds them), publishes. A process is not ready, and a test
    may not ask, before this.

    nats-py's `flush()` alone does not prove it: it writes its PING straight to the socket, ahead of commands
    still queued for the client's flusher task, so its PONG can come back before the server has them (measured:
    23 of 500 requests right after subscribe-and-flush got "no responders"). So first wait until the flusher has
    written the queue, then PING."""
    async with asyncio.timeout(timeout_seconds):
        while client.pending_data_size > 0 and client.is_connected:  # noqa: ASYNC110 (a counter, no event to wait on)
            await asyncio.sleep(0.001)
        await client.flush()


async def connect_with_retry(broker: NatsBroker, *, attempts: int = 60, delay_seconds: float = 0.5) -> None:
    """Connect at start-up even when NATS starts a moment after us; reconnects later are nats-py's job."""
    for attempt in range(1, attempts + 1):
        try:
            await broker.connect()
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            if attempt == attempts:
                raise
            log.warning("NATS not reachable yet; retrying", extra={"error": str(exc), "attempt": attempt})
            await asyncio.sleep(delay_seconds)
        else:
            return

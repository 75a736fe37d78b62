"""The SSRF guard: a client's webhook URL may only reach public addresses, and only the ones we checked.

Design decision: the destination host is resolved once per attempt, every resolved address is checked, and the
request then connects to a checked address itself (`Destination.pinned`: the URL's host replaced by the
address, the name kept in the Host header and as the TLS server name, so certificates are still verified
against it). Nothing resolves the name a second time, so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot redirect the request. `WEBHOOK_ALLOW_PRIVATE=true` (local runs and tests)
skips the address check but not the pinning.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port → the addresses it resolves to (as strings), in the resolver's order.
type Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# RFC 6052's well-known NAT64 prefix: the low 32 bits are the IPv4 address a NAT64 gateway will reach.
NAT64_PREFIX: Final = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationRefused(Exception):
    """The destination may not be called; nothing was sent, and retrying cannot change the answer."""


class LookupFailed(Exception):
    """The host could not be resolved now; a later attempt may succeed."""


async def system_resolver(host: str, port: int) -> list[str]:
    """DNS through the event loop's getaddrinfo (a thread, so the loop never blocks on a slow resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` must not be called (e.g. "a loopback address"), or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"{reason} (IPv4 {embedded} inside IPv6)" if reason else None
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


@dataclass(frozen=True, slots=True)
class Destination:
    """A webhook URL with the addresses it may be sent to (already checked), in the order to try them."""

    url: httpx.URL
    addresses: tuple[str, ...]

    def pinned(self, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """The URL aimed at `address`, plus the Host header and TLS server name that keep the original name."""
        host_header = self.url.host if self.url.port is None else f"{self.url.host}:{self.url.port}"
        extensions = {"sni_hostname": self.url.host} if self.url.scheme == "https" else {}
        return self.url.copy_with(host=address), {"Host": host_header}, extensions


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve_destination(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> Destination:
    """Resolve and check `url`'s host: DestinationRefused (never retried) or LookupFailed (retried)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DestinationRefused(f"invalid webhook URL: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise DestinationRefused("the webhook URL must be an absolute http(s) URL")
    host = parsed.host
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    literal = _literal_address(host)
    if literal is not None:
        resolved = [str(literal)]
    else:
        try:
            resolved = await resolver(host, port)
        except OSError as exc:
            raise LookupFailed(f"DNS lookup of {host} failed: {exc.strerror or exc}") from None
    if not resolved:
        raise LookupFailed(f"{host} resolves to no address")
    if not allow_private:
        for text in resolved:
            address = ipaddress.ip_address(text)
            reason = refusal_reason(address)
            if reason is not None:
                shown = f"{host} is" if literal is not None else f"{host} resolves to {address}, which is"
                raise DestinationRefused(f"destination refused: {shown} {reason}")
    return Destination(url=parsed, addresses=tuple(resolved))

"""The address a request comes from, for throttling what happens before (or instead of) authentication.

Behind a reverse proxy every request arrives from the proxy, so the client is in `X-Forwarded-For`; but that
header is whatever the sender wrote, so it is believed only when the direct peer is a trusted proxy
(TRUSTED_PROXIES), and then the client is the rightmost address that is not itself a trusted proxy: the
leftmost entries are the sender's own words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

type Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "x-forwarded-for"


class TrustedProxies:
    """The networks of TRUSTED_PROXIES (a plain class: Litestar's dependency checks take it as one opaque type)."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Sequence[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def source_address(peer: str | None, forwarded_for: str | None, *, trusted_proxies: TrustedProxies) -> str:
    """The client's address as far as it can be trusted ("unknown" when the server was given none)."""
    address = peer or "unknown"
    if not forwarded_for or address not in trusted_proxies:
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if hop not in trusted_proxies:
            return hop
        address = hop
    return address

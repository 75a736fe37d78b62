"""Which address failed-authentication throttling counts a request against."""

from __future__ import annotations

import pytest

from services.gateway.client_address import TrustedProxies, source_address

PROXIES = TrustedProxies(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # No proxy in front: the peer, whatever the header claims.
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        ("203.0.113.7", None, "203.0.113.7"),
        # A trusted proxy: the rightmost hop that is not one of ours (the left part is the sender's own words).
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "198.51.100.1, 10.0.0.9", "198.51.100.1"),
        ("fd00::2", "2001:db8::5", "2001:db8::5"),
        # Only proxies in the chain: the outermost of them.
        ("10.0.0.2", "10.0.0.3", "10.0.0.3"),
        # Garbage in the header is an untrusted hop like any other.
        ("10.0.0.2", "not-an-address", "not-an-address"),
        (None, None, "unknown"),
    ],
)
def test_source_address(peer: str | None, forwarded_for: str | None, expected: str) -> None:
    assert source_address(peer, forwarded_for, trusted_proxies=PROXIES) == expected

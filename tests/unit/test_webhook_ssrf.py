"""The SSRF guard's rules: which addresses are refused (IPv4 and IPv6), and how a URL is resolved, checked and
pinned. DNS answers come from a resolver passed in (or the system's, for `localhost`); nothing is connected."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from services.webhook.ssrf import DestinationRefused, LookupFailed, Resolver, refusal_reason, resolve_destination


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.1.2.3", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a private address"),
        ("255.255.255.255", "a private address"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
        ("198.18.0.1", "a private address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),
        ("::ffff:10.1.2.3", "a private address (IPv4 10.1.2.3 inside IPv6)"),
        ("::ffff:169.254.169.254", "a link-local address (IPv4 169.254.169.254 inside IPv6)"),
        ("64:ff9b::7f00:1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),  # NAT64
        ("2002:7f00:1::1", "a loopback address (IPv4 127.0.0.1 inside IPv6)"),  # 6to4
        ("::127.0.0.1", "a reserved address"),  # IPv4-compatible (deprecated)
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_which_addresses_are_refused(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def resolver_for(answers: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError(-2, "Name or service not known")
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080/hook", "destination refused: 127.0.0.1 is a loopback address"),
        ("http://10.0.0.7/hook", "destination refused: 10.0.0.7 is a private address"),
        ("http://[::1]:8080/hook", "destination refused: ::1 is a loopback address"),
        ("http://[fe80::1]/hook", "destination refused: fe80::1 is a link-local address"),
        ("http://[fd00::1]/hook", "destination refused: fd00::1 is a private address"),
        (
            "http://[::ffff:127.0.0.1]/hook",
            "destination refused: ::ffff:127.0.0.1 is a loopback address (IPv4 127.0.0.1 inside IPv6)",
        ),
        ("https://0.0.0.0/hook", "destination refused: 0.0.0.0 is an unspecified address"),
        (
            "https://internal.example/hook",
            "destination refused: internal.example resolves to 192.168.0.10, which is a private address",
        ),
        # One bad address among good ones is enough: the connection could be made to any of them.
        (
            "https://mixed.example/hook",
            "destination refused: mixed.example resolves to 127.0.0.1, which is a loopback address",
        ),
        ("ftp://public.example/hook", "the webhook URL must be an absolute http(s) URL"),
    ],
)
async def test_private_destinations_are_refused(url: str, message: str) -> None:
    resolver = resolver_for(
        {
            "internal.example": ["192.168.0.10"],
            "mixed.example": ["93.184.216.34", "127.0.0.1"],
            "public.example": ["93.184.216.34"],
        }
    )
    with pytest.raises(DestinationRefused) as refused:
        await resolve_destination(url, allow_private=False, resolver=resolver)
    assert str(refused.value) == message


async def test_localhost_resolved_by_the_system_is_refused() -> None:
    with pytest.raises(DestinationRefused) as refused:
        await resolve_destination("http://localhost:9/hook", allow_private=False)
    assert str(refused.value).startswith("destination refused: localhost resolves to ")
    assert "a loopback address" in str(refused.value)


async def test_a_public_destination_is_resolved_once_and_pinned_to_what_was_checked() -> None:
    calls: list[str] = []
    resolver = resolver_for({"hooks.example.com": ["93.184.216.34", "2606:4700:4700::1111"]}, calls)
    destination = await resolve_destination("https://hooks.example.com/cf?x=1", allow_private=False, resolver=resolver)
    assert calls == ["hooks.example.com"]
    assert destination.addresses == ("93.184.216.34", "2606:4700:4700::1111")
    url, headers, extensions = destination.pinned("93.184.216.34")
    assert url == httpx.URL("https://93.184.216.34/cf?x=1")
    assert headers == {"Host": "hooks.example.com"}
    # TLS still names (and verifies) the original host.
    assert extensions == {"sni_hostname": "hooks.example.com"}
    v6_url, _, _ = destination.pinned("2606:4700:4700::1111")
    assert str(v6_url) == "https://[2606:4700:4700::1111]/cf?x=1"


async def test_a_non_default_port_stays_in_the_host_header_and_plain_http_has_no_tls_name() -> None:
    destination = await resolve_destination(
        "http://hooks.example.com:8443/cf",
        allow_private=False,
        resolver=resolver_for({"hooks.example.com": ["8.8.8.8"]}),
    )
    url, headers, extensions = destination.pinned("8.8.8.8")
    assert url == httpx.URL("http://8.8.8.8:8443/cf")
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {}


async def test_allow_private_skips_the_check_but_still_pins() -> None:
    destination = await resolve_destination(
        "http://receiver.test:8080/hook", allow_private=True, resolver=resolver_for({"receiver.test": ["127.0.0.1"]})
    )
    assert destination.addresses == ("127.0.0.1",)


async def test_an_unresolvable_host_is_a_retryable_lookup_failure_not_a_refusal() -> None:
    with pytest.raises(LookupFailed) as failed:
        await resolve_destination("https://nowhere.example/hook", allow_private=False, resolver=resolver_for({}))
    assert str(failed.value) == "DNS lookup of nowhere.example failed: Name or service not known"

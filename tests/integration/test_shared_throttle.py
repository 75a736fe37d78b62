"""The shared throttle on a real nats-server: two throttles (two gateways' worth) spend one KV bucket by CAS, a
large burst is spent through leases with fewer writes and never beyond it, and an unreachable store falls back to
the gateway's own buckets, counted."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY

from deploy.processes import NatsServer
from services.gateway.shared_throttle import SharedKeyThrottle, bucket_key, lease_size, open_throttle_bucket
from services.gateway.throttle import RateLimit, Throttle
from shared.subjects import THROTTLE_BUCKETS

# Only the burst matters: one token per 1 000 s.
BURST_ONLY = RateLimit(0.001, 20)


@pytest.fixture
async def connections(nats_server: NatsServer) -> AsyncIterator[list[NatsClient]]:
    clients = [await nats.connect(nats_server.url) for _ in range(2)]
    yield clients
    for client in clients:
        await client.close()


def shared_throttle(client: NatsClient, limits: dict[str, RateLimit]) -> SharedKeyThrottle:
    async def open_bucket() -> KeyValue:
        return await open_throttle_bucket(client, timeout_seconds=5.0, replicas=1)

    return SharedKeyThrottle(limits, open_bucket=open_bucket, fallback=Throttle(limits=dict(limits)))


async def kv_writes(client: NatsClient) -> int:
    """Every write to the bucket so far (its stream's last sequence): the round trips a decision cost."""
    await open_throttle_bucket(client, timeout_seconds=5.0, replicas=1)
    info = await client.jetstream().stream_info(f"KV_{THROTTLE_BUCKETS.name}")
    return int(info.state.last_seq)


def fallbacks(reason: str) -> float:
    value = REGISTRY.get_sample_value("caseflow_gateway_throttle_store_fallbacks_total", {"reason": reason})
    return value or 0.0


async def test_two_gateways_sequentially_spend_one_bucket(connections: list[NatsClient]) -> None:
    gateways = [shared_throttle(client, {"create": BURST_ONLY}) for client in connections]
    writes_before = await kv_writes(connections[0])
    decisions = [await gateways[n % 2].take(caller="key_sequential", route_class="create") for n in range(60)]
    allowed = [d for d in decisions if d.allowed]
    # A burst this small takes no lease: one write per token spent, none for a refusal.
    assert lease_size(BURST_ONLY) == 0
    assert await kv_writes(connections[0]) - writes_before == 20
    # One bucket: the answers count down 19..0 across both gateways, then every request is refused.
    assert [d.remaining for d in allowed] == list(range(19, -1, -1))
    assert [d.allowed for d in decisions] == [True] * 20 + [False] * 40
    refused = decisions[-1].headers()
    assert refused["Retry-After"] == refused["RateLimit-Reset"] == "1000"
    assert refused["RateLimit-Limit"] == "20"


async def test_two_gateways_racing_on_one_key_allow_the_burst_and_never_more(connections: list[NatsClient]) -> None:
    gateways = [shared_throttle(client, {"default": BURST_ONLY}) for client in connections]
    contended_before = fallbacks("contended")
    decisions = await asyncio.gather(
        *(gateways[n % 2].take(caller="key_racing", route_class="default") for n in range(60))
    )
    allowed = sum(d.allowed for d in decisions)
    # The CAS never admits more than the burst; a request may only be refused early after losing every round.
    assert 18 <= allowed <= 20
    assert allowed + (fallbacks("contended") - contended_before) >= 20
    # Both gateways see the spent bucket afterwards.
    assert not (await gateways[0].take(caller="key_racing", route_class="default")).allowed
    assert not (await gateways[1].take(caller="key_racing", route_class="default")).allowed


async def test_leases_spend_a_large_burst_with_fewer_writes_and_never_more_than_the_burst(
    connections: list[NatsClient],
) -> None:
    burst = RateLimit(0.001, 200)
    lease = lease_size(burst)
    assert lease == 5
    gateways = [shared_throttle(client, {"default": burst}) for client in connections]
    writes_before = await kv_writes(connections[0])
    decisions = [await gateways[n % 2].take(caller="key_leased", route_class="default") for n in range(300)]
    # Every leased token is a token of the shared bucket: the burst in total, across both gateways, not one more;
    # the requests kept coming, so no lease was left unspent.
    assert sum(d.allowed for d in decisions) == 200
    assert not any(d.allowed for d in decisions[-20:])
    # One write per token and its lease (plus the short last leases as the bucket ran dry) instead of one per token.
    writes = await kv_writes(connections[0]) - writes_before
    assert 200 / (1 + lease) <= writes <= 200 / (1 + lease) + 10
    # Each gateway's answers count down what the client has left, as that gateway sees it.
    for parity in (0, 1):
        remaining = [d.remaining for d in decisions[parity::2] if d.allowed]
        assert remaining == sorted(remaining, reverse=True)
        assert len(set(remaining)) == len(remaining)
    assert decisions[-1].headers()["Retry-After"] == "1000"


async def test_concurrent_requests_of_one_key_share_the_writes_of_a_lease(connections: list[NatsClient]) -> None:
    burst = RateLimit(0.001, 400)
    gateway = shared_throttle(connections[0], {"default": burst})
    writes_before = await kv_writes(connections[0])
    decisions = await asyncio.gather(*(gateway.take(caller="key_queued", route_class="default") for _ in range(100)))
    assert all(d.allowed for d in decisions)
    # Queued behind one write, requests take the lease it brought: 11 tokens per write.
    assert await kv_writes(connections[0]) - writes_before == math.ceil(100 / (1 + lease_size(burst)))
    assert sorted(d.remaining for d in decisions) == list(range(300, 400))


async def test_an_unreachable_store_falls_back_to_this_gateways_buckets_and_counts_it(nats_server: NatsServer) -> None:
    limits = {"create": RateLimit(0.001, 3)}
    # A connection that has gone away: every JetStream call fails at once.
    lost = await nats.connect(nats_server.url)
    await lost.close()

    async def unreachable() -> KeyValue:
        return await open_throttle_bucket(lost, timeout_seconds=0.2, replicas=1)

    throttle = SharedKeyThrottle(limits, open_bucket=unreachable, fallback=Throttle(limits=dict(limits)))
    before = fallbacks("unavailable")
    decisions = [await throttle.take(caller="key_offline", route_class="create") for _ in range(4)]
    # Fail open to per-gateway limits, not to no limit.
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert fallbacks("unavailable") - before == 4


def test_bucket_keys_are_valid_kv_keys_whatever_the_caller() -> None:
    keys = {bucket_key(caller, "create") for caller in ("key_1", "a/b+c d", "é☃", "x" * 300, "")}
    assert len(keys) == 5
    assert all(re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key) and ".." not in key for key in keys)

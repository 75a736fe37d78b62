"""The gateway's API-key cache: expiry, eviction by broadcast, and reconnect invalidation."""

from __future__ import annotations

from services.gateway.auth import KeyCache
from shared.contracts.auth import KeyIdentity

ALICE_1 = KeyIdentity(client_id="alice", key_id="k1", plan="pro")
ALICE_2 = KeyIdentity(client_id="alice", key_id="k2", plan="pro")
BOB = KeyIdentity(client_id="bob", key_id="k3", plan="free")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def filled(clock: Clock, epoch: list[int]) -> KeyCache:
    cache = KeyCache(ttl_seconds=30, epoch=lambda: epoch[0], clock=clock)
    cache.put("key-a1", ALICE_1)
    cache.put("key-a2", ALICE_2)
    cache.put("key-b", BOB)
    return cache


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = filled(clock, [0])
    assert cache.get("key-a1") == ALICE_1
    clock.now = 30.0
    assert cache.get("key-a1") is None


def test_evicting_one_key_keeps_the_others() -> None:
    cache = filled(Clock(), [0])
    assert cache.evict(client_id="alice", key_id="k1") == 1
    assert cache.get("key-a1") is None
    assert cache.get("key-a2") == ALICE_2


def test_evicting_a_client_drops_all_its_keys_only() -> None:
    cache = filled(Clock(), [0])
    assert cache.evict(client_id="alice") == 2
    assert cache.get("key-a2") is None
    assert cache.get("key-b") == BOB


def test_a_reconnect_invalidates_everything_cached_before_it() -> None:
    epoch = [0]
    cache = filled(Clock(), epoch)
    epoch[0] = 1
    assert cache.get("key-b") is None


def test_plaintext_keys_are_not_kept() -> None:
    cache = filled(Clock(), [0])
    assert all("key-" not in fingerprint for fingerprint in cache._entries)

"""API-key authentication at the gateway: ask the auth service, cache positive answers briefly.

A cached identity is dropped when it expires (AUTH_CACHE_SECONDS), when auth broadcasts that the client's
keys or plan changed (`auth.evt.keys_changed`, heard by every gateway), and when the NATS connection has
reconnected since it was cached (a broadcast may have been missed meanwhile). Unknown and inactive keys are
never cached, so reactivating a key works at once. The cache is keyed by a SHA-256 of the key, so the
plaintext key is not kept in memory longer than the request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.contracts.auth import KeyIdentity


@dataclass(slots=True)
class _Entry:
    identity: KeyIdentity
    expires_at: float
    epoch: int


@dataclass
class KeyCache:
    ttl_seconds: float
    # Changes whenever the NATS connection was re-established (nats-py's reconnect counter).
    epoch: Callable[[], int]
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)

    @staticmethod
    def fingerprint(api_key: str) -> str:
        return hashlib.sha256(api_key.encode()).hexdigest()

    def get(self, api_key: str) -> KeyIdentity | None:
        fingerprint = self.fingerprint(api_key)
        entry = self._entries.get(fingerprint)
        if entry is None:
            return None
        if entry.expires_at <= self.clock() or entry.epoch != self.epoch():
            del self._entries[fingerprint]
            return None
        return entry.identity

    def put(self, api_key: str, identity: KeyIdentity) -> None:
        if self.ttl_seconds <= 0:
            return
        self._entries[self.fingerprint(api_key)] = _Entry(identity, self.clock() + self.ttl_seconds, self.epoch())

    def evict(self, *, client_id: str, key_id: str | None = None) -> int:
        """Drop the client's cached identities (only one key's, when `key_id` is given)."""
        doomed = [
            fingerprint
            for fingerprint, entry in self._entries.items()
            if entry.identity.client_id == client_id and (key_id is None or entry.identity.key_id == key_id)
        ]
        for fingerprint in doomed:
            del self._entries[fingerprint]
        return len(doomed)

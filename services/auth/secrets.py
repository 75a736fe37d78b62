"""Client webhook signing secrets encrypted at rest (Fernet: AES-128-CBC + HMAC-SHA256, from `cryptography`).

The webhook service must sign with the plaintext `whsec_` secret, so it cannot be hashed like an API key; it is
stored encrypted with a key from WEBHOOK_SECRET_KEYS and decrypted only when auth hands it to the webhook
service. The setting is a key ring: the first key encrypts, every key decrypts (`MultiFernet`), which is what
makes rotation possible without downtime (README, "Rotating keys and secrets"): put a new key first, restart
auth, run `python -m services.auth.admin reencrypt-webhook-secrets`, then drop the old key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# Secrets written before encryption existed are read as they are (and re-encrypted by the admin command).
_PLAINTEXT_PREFIX: Final = "whsec_"


class UndecryptableSecret(Exception):
    """A stored secret none of WEBHOOK_SECRET_KEYS decrypts (a key was removed before re-encryption ran)."""


class SecretCipher:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._ring = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, secret: str) -> str:
        return self._ring.encrypt(secret.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if stored.startswith(_PLAINTEXT_PREFIX):
            return stored
        try:
            return self._ring.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret("no configured WEBHOOK_SECRET_KEYS key decrypts this secret") from None

    def reencrypt(self, stored: str) -> str:
        """The same secret encrypted with the first key (plaintext legacy values included)."""
        if stored.startswith(_PLAINTEXT_PREFIX):
            return self.encrypt(stored)
        try:
            return self._ring.rotate(stored.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret("no configured WEBHOOK_SECRET_KEYS key decrypts this secret") from None

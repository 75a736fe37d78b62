"""What tests that open the auth service's collections directly need to read them as the service does."""

from __future__ import annotations

from typing import Final

from services.auth.secrets import SecretCipher
from shared.settings import AuthSettings

# The development key ring every test stack runs with (AuthSettings' default).
TEST_CIPHER: Final = SecretCipher(AuthSettings().webhook_secret_keys)

"""Auth's pure rules: key material and its keyed hash, webhook secrets, which key states may change how."""

from __future__ import annotations

import base64

import pytest

from services.auth.domain import (
    API_KEY_PREFIX,
    KeyStatus,
    hash_api_key,
    is_well_formed_api_key,
    key_status_sources,
    new_api_key,
    new_client_id,
    new_key_id,
    new_webhook_secret,
    require_usable_key,
)
from shared.errors import ErrorCode, ServiceError

SECRET = "unit-test-key-hash-secret"


def test_api_keys_carry_the_prefix_and_at_least_256_random_bits() -> None:
    keys = {new_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(API_KEY_PREFIX)
        random_part = key.removeprefix(API_KEY_PREFIX)
        # token_urlsafe: 43 base64url characters for 32 bytes.
        assert len(random_part) >= 43
        assert set(random_part) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert is_well_formed_api_key(key)


def test_the_hash_is_a_keyed_sha256_that_reveals_nothing_of_the_key() -> None:
    key = new_api_key()
    digest = hash_api_key(key, secret=SECRET)
    assert digest == hash_api_key(key, secret=SECRET)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest != hash_api_key(key, secret=SECRET + "-other")
    assert digest != hash_api_key(new_api_key(), secret=SECRET)
    assert key not in digest
    assert API_KEY_PREFIX not in digest


@pytest.mark.parametrize(
    ("candidate", "well_formed"),
    [
        ("", False),
        ("not-a-caseflow-key", False),
        ("cf_test_abc", False),
        (API_KEY_PREFIX + "x" * 100, True),
        (API_KEY_PREFIX + "x" * 5000, False),
    ],
)
def test_only_well_formed_keys_reach_the_database(candidate: str, well_formed: bool) -> None:
    assert is_well_formed_api_key(candidate) is well_formed


def test_webhook_secrets_follow_the_standard_webhooks_format() -> None:
    secrets = {new_webhook_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) <= 64


def test_public_ids_are_distinct_and_say_what_they_name() -> None:
    assert new_client_id().startswith("cli_")
    assert new_key_id().startswith("key_")
    assert len({new_key_id() for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (KeyStatus.ACTIVE, KeyStatus.INACTIVE, True),
        (KeyStatus.INACTIVE, KeyStatus.ACTIVE, True),
        (KeyStatus.ACTIVE, KeyStatus.ACTIVE, True),
        (KeyStatus.INACTIVE, KeyStatus.INACTIVE, True),
        (KeyStatus.ACTIVE, KeyStatus.REVOKED, True),
        (KeyStatus.INACTIVE, KeyStatus.REVOKED, True),
        (KeyStatus.REVOKED, KeyStatus.REVOKED, True),
        (KeyStatus.REVOKED, KeyStatus.ACTIVE, False),
        (KeyStatus.REVOKED, KeyStatus.INACTIVE, False),
    ],
)
def test_key_status_changes(current: KeyStatus, target: KeyStatus, allowed: bool) -> None:
    assert (current in key_status_sources(target)) is allowed


@pytest.mark.parametrize(
    ("status", "refusal"),
    [(KeyStatus.ACTIVE, None), (KeyStatus.INACTIVE, ErrorCode.FORBIDDEN), (KeyStatus.REVOKED, ErrorCode.UNAUTHORIZED)],
)
def test_which_keys_authenticate(status: KeyStatus, refusal: ErrorCode | None) -> None:
    if refusal is None:
        require_usable_key(status)
        return
    with pytest.raises(ServiceError) as refused:
        require_usable_key(status)
    assert refused.value.code is refusal

"""Settings come from the environment; a bad value names its variable; production refuses dev secrets."""

from __future__ import annotations

import base64

import pytest

from shared.settings import (
    AgentMailSettings,
    AuthSettings,
    BillingSettings,
    CaseSettings,
    GatewaySettings,
    SettingsError,
    WebhookSettings,
    deploy_required_variables,
    load_settings,
)


def test_defaults_load_without_any_environment() -> None:
    settings = load_settings(GatewaySettings, {})
    assert settings.gateway_port == 8000
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.rpc_timeout_seconds == 5.0


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        WebhookSettings,
        {
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_SCHEDULE_SECONDS": "0, 1,2.5",
            "RPC_TIMEOUT_SECONDS": "1.5",
        },
    )
    assert settings.webhook_allow_private is True
    assert settings.webhook_retry_schedule_seconds == [0.0, 1.0, 2.5]
    assert settings.rpc_timeout_seconds == 1.5


def test_follow_up_hour_seconds_is_read_from_the_environment() -> None:
    assert load_settings(CaseSettings, {"FOLLOW_UP_HOUR_SECONDS": "1"}).follow_up_hour_seconds == 1.0


@pytest.mark.parametrize(
    ("cls", "variable", "value"),
    [
        (GatewaySettings, "GATEWAY_PORT", "eighty"),
        (GatewaySettings, "GATEWAY_PORT", "70000"),
        (GatewaySettings, "LOG_LEVEL", "LOUD"),
        (GatewaySettings, "RPC_TIMEOUT_SECONDS", "0"),
        (GatewaySettings, "CONSUMER_BACKOFF_SECONDS", "1,soon"),
        (GatewaySettings, "MONGO_DB", "no spaces allowed"),
        (BillingSettings, "PLANS", "free=100"),
        (CaseSettings, "AGENT_BACKEND", "magic"),
        (CaseSettings, "FOLLOW_UP_HOUR_SECONDS", "-1"),
        (AgentMailSettings, "AGENTMAIL_WEBHOOK_SECRET", "not-a-whsec"),
        # An empty or short HMAC key would make every signature forgeable.
        (AgentMailSettings, "AGENTMAIL_WEBHOOK_SECRET", "whsec_"),
        (AgentMailSettings, "AGENTMAIL_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"x" * 23).decode()),
        (AgentMailSettings, "AGENTMAIL_WEBHOOK_SECRET", "whsec_not*base64"),
        (WebhookSettings, "WEBHOOK_ALLOW_PRIVATE", "perhaps"),
        (GatewaySettings, "TRUSTED_PROXIES", "10.0.0.0/8,not-a-network"),
        (GatewaySettings, "RATE_LIMIT_FAILED_AUTH", "lots"),
        (AuthSettings, "KEY_HASH_SECRET", "short"),
    ],
)
def test_bad_value_names_the_variable(cls: type, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(cls, {variable: value})
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_webhook_signing_secret_of_24_bytes_is_accepted() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert load_settings(AgentMailSettings, {"AGENTMAIL_WEBHOOK_SECRET": secret}).agentmail_webhook_secret == secret


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(AuthSettings, {"CASEFLOW_ENV": "production", "NATS_PASSWORD": "n" * 24})
    assert caught.value.variable == "KEY_HASH_SECRET"
    with pytest.raises(SettingsError) as caught:
        load_settings(
            AuthSettings, {"CASEFLOW_ENV": "production", "KEY_HASH_SECRET": "x" * 32, "NATS_PASSWORD": "n" * 24}
        )
    assert caught.value.variable == "WEBHOOK_SECRET_KEYS"  # a list default (from a factory) is refused too
    own_keys = {"WEBHOOK_SECRET_KEYS": base64.urlsafe_b64encode(b"k" * 32).decode()}
    settings = load_settings(
        AuthSettings,
        {"CASEFLOW_ENV": "production", "KEY_HASH_SECRET": "x" * 32, "NATS_PASSWORD": "n" * 24, **own_keys},
    )
    assert settings.key_hash_secret == "x" * 32


def test_production_requires_a_nats_password_of_its_own() -> None:
    # Locally an empty NATS_PASSWORD means the service's development password; production must set one.
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings, {"CASEFLOW_ENV": "production"})
    assert caught.value.variable == "NATS_PASSWORD"
    own_keys = {"CONSOLE_SESSION_KEYS": base64.urlsafe_b64encode(b"c" * 32).decode()}
    production = {"CASEFLOW_ENV": "production", "NATS_PASSWORD": "s3cret", **own_keys}
    assert load_settings(GatewaySettings, production).nats_password


def test_deploy_required_variables_include_connections_and_secrets() -> None:
    assert deploy_required_variables(GatewaySettings) == [
        "NATS_URL",
        "MONGO_URL",
        "NATS_PASSWORD",
        "CONSOLE_SESSION_KEYS",
    ]
    assert set(deploy_required_variables(AgentMailSettings)) >= {
        "AGENTMAIL_BASE_URL",
        "AGENTMAIL_API_KEY",
        "AGENTMAIL_INBOX_ID",
        "AGENTMAIL_WEBHOOK_SECRET",
    }
    assert "KEY_HASH_SECRET" in deploy_required_variables(AuthSettings)


def test_production_accepts_an_empty_optional_secret() -> None:
    # OPENAI_API_KEY is empty by default (local model servers need none): production does not demand it.
    settings = load_settings(CaseSettings, {"CASEFLOW_ENV": "production", "NATS_PASSWORD": "s3cret"})
    assert settings.openai_api_key == ""

"""The simulator's settings, read once from `AGENTMAIL_SIM_*` environment variables.

Its defaults are taken from the adapter's own defaults (`AgentMailSettings`), so that `make run` and a bare
`python -m simulator.agentmail` agree with the adapter without any configuration: same API key, inbox,
webhook secret, and the port of the adapter's default `AGENTMAIL_BASE_URL`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from shared.settings import AgentMailSettings

_ADAPTER_DEFAULTS: Final = AgentMailSettings()
PREFIX: Final = "AGENTMAIL_SIM_"


class SimulatorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = urlsplit(_ADAPTER_DEFAULTS.agentmail_base_url).port or 8025
    api_key: Annotated[str, Meta(min_length=1)] = _ADAPTER_DEFAULTS.agentmail_api_key
    # The inbox that exists from the start (the adapter's AGENTMAIL_INBOX_ID).
    inbox_id: Annotated[str, Meta(pattern=r"^[^@\s]+@[^@\s]+$")] = _ADAPTER_DEFAULTS.agentmail_inbox_id
    # A webhook endpoint registered from the start, for every event type; empty disables it.
    webhook_url: str = "http://127.0.0.1:8000/webhooks/agentmail"
    webhook_secret: Annotated[str, Meta(pattern=r"^whsec_")] = _ADAPTER_DEFAULTS.agentmail_webhook_secret
    # Delays before each webhook redelivery after a failed attempt (AgentMail's schedule, compressed).
    webhook_retry_seconds: Annotated[list[Annotated[float, Meta(ge=0)]], Meta(max_length=20)] = msgspec.field(
        default_factory=lambda: [0.5, 2.0, 5.0, 15.0, 60.0]
    )
    webhook_timeout_seconds: Annotated[float, Meta(gt=0)] = 15.0
    # How long a scripted counterparty "takes" to answer: natural for demos, tiny in tests.
    reply_delay_seconds: Annotated[float, Meta(ge=0)] = 3.0
    # Delay between a send and its delivery, bounce and complaint events.
    event_delay_seconds: Annotated[float, Meta(ge=0)] = 0.2
    # Base of attachment download URLs; empty means "the URL the request came in on".
    public_url: str = ""
    log_level: str = "INFO"


def load_simulator_settings(environ: Mapping[str, str] | None = None) -> SimulatorSettings:
    """Build the settings from `AGENTMAIL_SIM_<FIELD>` variables; raises msgspec.ValidationError."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in msgspec.structs.fields(SimulatorSettings):
        raw = environ.get(PREFIX + field.name.upper())
        if raw is None:
            continue
        is_list = field.name == "webhook_retry_seconds"
        values[field.name] = [item.strip() for item in raw.split(",") if item.strip()] if is_list else raw
    return msgspec.convert(values, SimulatorSettings, strict=False)


def load_simulator_settings_or_exit() -> SimulatorSettings:
    try:
        return load_simulator_settings()
    except msgspec.ValidationError as exc:
        problem, _, where = str(exc).partition(" - at `$.")
        variable = PREFIX + where.split("`")[0].split("[")[0].upper() if where else "<settings>"
        print(f"agentmail simulator: invalid setting {variable}: {problem}", file=sys.stderr)
        raise SystemExit(2) from None

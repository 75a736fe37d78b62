"""Health request/reply: every service answers `<service>.rpc.health`."""

from __future__ import annotations

from typing import Literal

import msgspec

ComponentState = Literal["ok", "down"]


class HealthReport(msgspec.Struct, frozen=True, rename="camel"):
    service: str
    instance: str
    version: str
    started_at: int
    mongodb: ComponentState
    # Dependencies that refuse this process's configuration or credentials, with the reason (shared.failures).
    problems: dict[str, str] = {}

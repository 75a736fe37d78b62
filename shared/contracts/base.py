"""Base for every message Struct: frozen, keyword-only, camelCase on the wire (as the HTTP API is)."""

from __future__ import annotations

import msgspec


class Contract(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Subclass for every request, reply and event payload that crosses a service boundary."""

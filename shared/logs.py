"""One log format for every service: a JSON object per line on stdout.

Correlation fields (request id, case id, client id) live in context variables, so a handler binds them once
and every log line written while it runs (including FastStream's and our libraries') carries them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Final

import msgspec

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
case_id_var: ContextVar[str | None] = ContextVar("case_id", default=None)
client_id_var: ContextVar[str | None] = ContextVar("client_id", default=None)
# The NATS subject of the message being handled (not a log field: the MongoDB command log names it, so a test can
# tell a request's own commands from those of the commands it caused).
handled_subject_var: ContextVar[str | None] = ContextVar("handled_subject", default=None)

_CONTEXT_FIELDS: Final = (
    ("request_id", request_id_var),
    ("case_id", case_id_var),
    ("client_id", client_id_var),
)
# Attributes every LogRecord has; anything else passed through `extra=` is emitted as a field.
_STANDARD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI duplicate of msg
}
_encoder = msgspec.json.Encoder(enc_hook=str)


# Shapes of secrets we issue: API keys and webhook signing secrets. Redacted from every line, whatever logged it.
_SECRET_SHAPES: Final = re.compile(r"cf_live_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}")
REDACTED: Final = "[redacted]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; known secret values and secret-shaped strings are redacted (defence in depth:
    code never logs secrets on purpose, and a test scans every log line of the end-to-end suite)."""

    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.service = service
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 8}, key=len, reverse=True)

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return _SECRET_SHAPES.sub(REDACTED, line)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in _CONTEXT_FIELDS:
            value = var.get()
            if value is not None:
                entry[name] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact(_encoder.encode(entry).decode())


def configure_logging(service: str, level: str, *, secrets: Iterable[str] = ()) -> None:
    """`secrets`: this process's secret setting values, never to appear in a log line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream's per-message lines are logged at DEBUG (see create_broker); the driver's at WARNING.
    logging.getLogger("pymongo").setLevel(logging.WARNING)

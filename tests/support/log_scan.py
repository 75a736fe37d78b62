"""The session-end log scan: no secret in any line any process wrote (see tests/e2e/conftest.py `stack`).

It runs when the session's stack is torn down, after every test that used it, whatever order files ran in:
every line of every process (services, gateways, simulator, NATS, MongoDB) is searched for the API keys and
webhook secrets the admin CLI issued, the services' secret settings, and anything shaped like one of our secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SECRET_SHAPES = re.compile(r"cf_live_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}")


def leaked_secrets(log_files: Iterable[Path], secrets: set[str]) -> tuple[int, list[str]]:
    """(lines scanned, one entry per leaking line as `file:line: <secret prefix>…`)."""
    lines = 0
    leaks = []
    for path in sorted(log_files):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            lines += 1
            found = [secret for secret in secrets if secret and secret in line] + SECRET_SHAPES.findall(line)
            if found:
                leaks.append(f"{path.name}:{number}: {sorted(set(found))[0][:12]}…")
    return lines, leaks

"""Runs last in the end-to-end suite (files are collected in name order): no secret in any log line.

Every line written by every process of the session (services, gateways, simulator, NATS, MongoDB) is
scanned for the API keys and webhook secrets the admin CLI issued, the services' secret settings (AgentMail
key and webhook secret, key-hash secret, OpenAI key), and anything shaped like one of our secrets.
"""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import AgentMailSettings
from tests.support.api import ISSUED_SECRETS
from tests.support.processes import Stack

SECRET_SHAPES = re.compile(r"cf_live_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}")


def test_no_secret_appears_in_any_log_line(stack: Stack, log_dir: Path) -> None:
    defaults = AgentMailSettings()
    secrets = {
        *ISSUED_SECRETS,
        stack.env.get("AGENTMAIL_API_KEY", defaults.agentmail_api_key),
        stack.env.get("AGENTMAIL_WEBHOOK_SECRET", defaults.agentmail_webhook_secret),
        stack.env["KEY_HASH_SECRET"],
        stack.env["OPENAI_API_KEY"],
    }
    assert len(ISSUED_SECRETS) >= 20, "the suite should have issued keys to look for"
    log_files = sorted(log_dir.glob("*.log"))
    assert {path.stem for path in log_files} >= {"gateway", "auth", "billing", "case", "agentmail_adapter", "webhook"}
    lines = 0
    leaks = []
    for path in log_files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            lines += 1
            found = [secret for secret in secrets if secret in line] + SECRET_SHAPES.findall(line)
            if found:
                leaks.append(f"{path.name}:{number}: {sorted(set(found))[0][:12]}…")
    assert lines > 1000
    assert not leaks, "\n".join(leaks[:20])

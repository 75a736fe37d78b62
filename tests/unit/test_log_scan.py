"""The session-end log scan finds configured secrets and secret-shaped strings, and nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.support.log_scan import leaked_secrets


def test_the_scan_finds_configured_secrets_and_secret_shapes(tmp_path: Path) -> None:
    (tmp_path / "case.log").write_text('{"msg":"ok"}\n{"msg":"key cf_live_abcdefghijkl"}\n')
    (tmp_path / "auth.log").write_text('{"msg":"hash secret s3cr3t-value"}\n{"msg":"fine"}\n')
    lines, leaks = leaked_secrets(tmp_path.glob("*.log"), {"s3cr3t-value"})
    assert lines == 4
    assert leaks == ["auth.log:1: s3cr3t-value…", "case.log:2: cf_live_abcd…"]


def test_clean_logs_leak_nothing(tmp_path: Path) -> None:
    (tmp_path / "gateway.log").write_text('{"msg":"[REDACTED]"}\n')
    assert leaked_secrets(tmp_path.glob("*.log"), {"s3cr3t-value", ""}) == (1, [])

"""`make demo` (deploy/demo.py) against the running stack: it follows every case live, then prints the table.

Piped, progress is one line per status change as it happens; on a terminal (a pseudo-terminal here) the table is
redrawn in place. Either way every scripted counterparty ends where the simulator's script says it must.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from typing import Any, Final

from deploy.processes import ROOT, Stack

# counterparty -> (final status, resultStatus) for the simulator's scripts.
EXPECTED: Final = {
    "agree": ("COMPLETED", "goal_achieved"),
    "ask": ("COMPLETED", "goal_achieved"),
    "chat": ("COMPLETED", "goal_achieved"),
    "refuse": ("FAILED", "failed_rejected"),
    "silent": ("FAILED", "max_retries"),
    "bounce": ("FAILED", "BOUNCED"),
    "complain": ("FAILED", "COMPLAINED"),
    "reject": ("FAILED", "REJECTED"),
}
ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def demo_env(stack: Stack, client: dict[str, Any]) -> dict[str, str]:
    return {
        **os.environ,
        "CASEFLOW_URL": stack.gateway_url,
        "CASEFLOW_API_KEY": client["apiKey"],
        "AGENTMAIL_BASE_URL": stack.simulator.url,
        "DEMO_TIMEOUT_SECONDS": "90",
        "DEMO_POLL_SECONDS": "0.2",
        "COLUMNS": "160",
    }


def final_rows(output: str) -> dict[str, list[str]]:
    """counterparty -> the cells of its row in the last table printed."""
    rows: dict[str, list[str]] = {}
    for line in ANSI.sub("", output).splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if cells and cells[0] in EXPECTED:
            rows[cells[0]] = cells  # later frames overwrite earlier ones
    return rows


def assert_every_case_ended_as_scripted(output: str) -> None:
    rows = final_rows(output)
    assert set(rows) == set(EXPECTED), output
    for behaviour, (status, result_status) in EXPECTED.items():
        assert rows[behaviour][1:3] == [status, result_status], (behaviour, rows[behaviour])
    assert "still open" not in output


def test_piped_demo_prints_each_status_change_as_it_happens_then_the_table(
    stack: Stack, client: dict[str, Any]
) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "deploy.demo"],
        cwd=ROOT,
        env=demo_env(stack, client),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    output = finished.stdout
    progress, _, table = output.partition("Caseflow demo")
    assert table, output
    changes = re.findall(r"^\s*[\d.]+s\s+(\w+)\s+(.+)$", progress, re.MULTILINE)
    seen: dict[str, list[str]] = {}
    for behaviour, change in changes:
        seen.setdefault(behaviour, []).append(change)
    assert set(seen) == set(EXPECTED), progress
    for behaviour, (status, _) in EXPECTED.items():
        # A case is listed when first seen (a quick one may already have ended), then at each change.
        assert seen[behaviour][-1].split(" -> ")[-1] == status, (behaviour, seen[behaviour])
    assert seen["silent"][-1] == "RUNNING -> FAILED", seen["silent"]  # ended while the demo watched
    # The ask case visibly waited for the client's answer, which the demo gave.
    # (The demo answers only after it has seen INPUT_NEEDED, so that state is always printed; what follows it may
    # be RUNNING or, between two polls, already COMPLETED.)
    assert any(change.startswith("INPUT_NEEDED -> ") for change in seen["ask"]), seen["ask"]
    assert_every_case_ended_as_scripted(output)


def test_on_a_terminal_the_table_is_redrawn_in_place(stack: Stack, client: dict[str, Any]) -> None:
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "deploy.demo"],
        cwd=ROOT,
        env={**demo_env(stack, client), "TERM": "xterm-256color"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    ) as demo:
        os.close(terminal)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the demo exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert demo.wait(timeout=180) == 0
    os.close(controller)
    output = b"".join(chunks).decode(errors="replace")
    frames = output.count("Caseflow demo, ")
    assert frames >= 3, output  # several renders of the same table...
    # ...each erasing the previous one in place: cursor up, erase line.
    assert "\x1b[1A" in output
    assert "\x1b[2K" in output
    assert "INPUT_NEEDED" in output  # a state seen only while the case ran
    assert_every_case_ended_as_scripted(output)

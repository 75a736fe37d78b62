"""`make bench` stopped with SIGTERM (a CI timeout, `kill`, a terminal closing) stops the stack it started.

Without a handler SIGTERM ends the Python process at once: no `with` block of the bench unwinds, and the whole
stack it started (nats-server, the embedded MongoDB, six services, the simulator) keeps running, holding ports
and CPU on a two-core machine. Found when a bench killed this way left its stack behind for the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from deploy.processes import ROOT

STARTED_A_STEP = "bench: baselines ..."


def processes_carrying(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds `marker` (children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


def test_sigterm_stops_the_stack_the_bench_started(tmp_path: Path) -> None:
    marker = f"BENCH_SIGTERM_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    results = tmp_path / "results.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env={
            **os.environ,
            key: value,
            "BENCH_ONLY": "baselines",
            "BENCH_RESULTS": str(results),
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stderr is not None
        # The first step starts once the stack is up: from here on there is a stack to leave behind.
        for line in bench.stderr:
            if line.startswith(STARTED_A_STEP):
                break
        else:
            raise AssertionError(f"the bench ended before its first step (exit {bench.wait()})")
        assert len(processes_carrying(marker)) > 1  # the bench and the stack it started
        bench.send_signal(signal.SIGTERM)
        bench.stderr.read()
        exit_code = bench.wait(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    left = processes_carrying(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # leave the machine as it was for the next test
    assert left == []
    assert exit_code == 128 + signal.SIGTERM
    assert not results.exists()  # a cut-short run writes no results that could be read as a whole run

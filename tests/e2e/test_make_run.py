"""`make run` as a user runs it: one command starts everything, SIGTERM or Ctrl-C stops it all, data stays.

The stack runs on free ports with its data in a temporary directory, so it cannot collide with a developer's
own `make run`. Leftover processes are found through their environment (CASEFLOW_DATA points at our dir).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from deploy.local_stack import METRICS_PORTS, metrics_port_variable
from deploy.processes import ROOT, free_port


def processes_with_env(name: str, value: str) -> list[int]:
    marker = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


class MakeRun:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.gateway_port = free_port()
        self.mongo_port = free_port()
        self.env = {
            **os.environ,
            "CASEFLOW_DATA": str(data_dir),
            "LOCAL_NATS_PORT": str(free_port()),
            "LOCAL_MONGO_PORT": str(self.mongo_port),
            "GATEWAY_PORT": str(self.gateway_port),
            # Every port free, so the test never collides with a developer's `make run` or another test run.
            "AGENTMAIL_SIM_PORT": str(free_port()),
            **{metrics_port_variable(service): str(free_port()) for service in METRICS_PORTS},
            "FOLLOW_UP_HOUR_SECONDS": "1",
        }
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job has
        )
        assert self.process.stdout is not None
        stdout = self.process.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for_output(self, text: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.output.append(line)
            if text in line:
                return
        raise TimeoutError(f"{text!r} not printed; output so far:\n{''.join(self.output[-60:])}")

    def printed_api_key(self) -> str:
        """The development API key from the banner (printed on every start)."""
        self.wait_for_output("API key:")
        found = re.search(r"API key:\s+(cf_live_[A-Za-z0-9_-]+)", self.output[-1])
        assert found, self.output[-1]
        return found.group(1)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)


def assert_key_works(gateway: str, api_key: str) -> None:
    """The key authenticates at the gateway, as the local-dev client on the unlimited plan."""
    response = httpx.get(f"{gateway}/usage", headers={"x-api-key": api_key}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["limit"] is None
    refused = httpx.get(f"{gateway}/usage", headers={"x-api-key": api_key + "x"}, timeout=10)
    assert refused.status_code == 401


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    for pid in processes_with_env("CASEFLOW_DATA", str(tmp_path / "data")):
        os.kill(pid, signal.SIGKILL)


def test_make_run_starts_everything_stops_cleanly_and_keeps_data(data_dir: Path) -> None:
    first = MakeRun(data_dir)
    first.start()
    gateway = f"http://127.0.0.1:{first.gateway_port}"
    first.wait_for_output(f"Gateway:  {gateway}")
    assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
    status = subprocess.run(
        ["make", "--no-print-directory", "status"], cwd=ROOT, env=first.env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    for program in ("nats", "mongodb", "agentmail_simulator", "gateway", "case", "webhook"):
        assert any(line.startswith(program) and "RUNNING" in line for line in status.stdout.splitlines()), program
    dev_key = first.printed_api_key()
    assert_key_works(gateway, dev_key)
    assert json.loads((data_dir / "dev-client.json").read_text())["apiKey"] == dev_key
    case_pids = [
        pid
        for pid in processes_with_env("CASEFLOW_DATA", str(data_dir))
        if b"services.case" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert case_pids, "the case service is not running"
    assert b"FOLLOW_UP_HOUR_SECONDS=1" in Path(f"/proc/{case_pids[0]}/environ").read_bytes().split(b"\0")
    mongo_url = f"mongodb://127.0.0.1:{first.mongo_port}/?directConnection=true"
    with MongoClient[dict[str, object]](mongo_url, serverSelectionTimeoutMS=5000) as client:
        client["caseflow"]["make_run_probe"].insert_one({"_id": "kept", "at": time.time()})

    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)  # to make itself, as `kill <pid of make>` would
    first.wait_exit()
    time.sleep(0.5)
    assert processes_with_env("CASEFLOW_DATA", str(data_dir)) == []

    second = MakeRun(data_dir)
    second.gateway_port, second.mongo_port = first.gateway_port, first.mongo_port
    second.env.update({"GATEWAY_PORT": str(first.gateway_port), "LOCAL_MONGO_PORT": str(first.mongo_port)})
    second.start()
    second.wait_for_output("Caseflow is ready.")
    # The development client is created once: the next start prints the same, still working key.
    assert second.printed_api_key() == dev_key
    assert_key_works(gateway, dev_key)
    with MongoClient[dict[str, object]](mongo_url, serverSelectionTimeoutMS=5000) as client:
        assert client["caseflow"]["make_run_probe"].find_one({"_id": "kept"}) is not None

    assert second.process is not None
    os.killpg(second.process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
    second.wait_exit()
    time.sleep(0.5)
    assert processes_with_env("CASEFLOW_DATA", str(data_dir)) == []

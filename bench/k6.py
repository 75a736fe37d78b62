"""Runs one HTTP load phase with k6 (`bench/scripts/http.js`) and reads its `handleSummary` JSON.

Key design decision: each phase is its own k6 process, so the CPU the processes under test spend can be
attributed to exactly that phase, and k6's own CPU (a waited-for child) is measured the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import msgspec

from bench.stats import LoadResult, load_result

K6 = Path(sys.executable).parent / "k6"
SCRIPT = Path(__file__).parent / "scripts" / "http.js"
# The latency of expected (successful) responses, computed by k6 because the script declares a threshold on it.
OK_DURATION = "http_req_duration{expected_response:true}"


class HttpPhase(msgspec.Struct, frozen=True, kw_only=True):
    """One k6 run: what to request and how (a fixed arrival rate or N constant VUs)."""

    base_url: str
    method: Literal["GET", "POST"]
    path: str
    executor: Literal["rate", "vus"]
    duration_s: float
    rate: int = 0
    vus: int = 0
    max_vus: int = 200
    headers: dict[str, str] = {}
    # A request body; `__UNIQUE__` is replaced by a value unique to the iteration (and `tag`).
    body: str | None = None
    idempotency: bool = False
    # A JSON list of ids substituted for `{id}` in the path: each iteration takes its own (`ids_unique`, for
    # requests that consume their target) or a random one.
    ids_file: str | None = None
    ids_unique: bool = False
    # With `ids_unique`, the first id this run takes (the ids earlier phases used up are skipped).
    ids_offset: int = 0
    expect_status: list[int] = msgspec.field(default_factory=lambda: [200])
    tag: str = "bench"


def parse_summary(data: dict[str, Any]) -> LoadResult:
    """A LoadResult from k6's end-of-test summary (`handleSummary`'s `data`)."""
    metrics: dict[str, Any] = data["metrics"]
    requests = int(metrics.get("http_reqs", {}).get("values", {}).get("count", 0))
    failed = int(metrics.get("http_req_failed", {}).get("values", {}).get("passes", 0))
    dropped = int(metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0))
    duration_s = float(data["state"]["testRunDurationMs"]) / 1000.0
    trend: dict[str, float] = metrics.get(OK_DURATION, metrics.get("http_req_duration", {})).get("values", {})
    names = {"p50": "med", "p95": "p(95)", "p99": "p(99)", "max": "max", "mean": "avg"}
    latencies = {ours: float(trend[theirs]) for ours, theirs in names.items() if trend.get(theirs) is not None}
    return load_result(requests=requests, failed=failed, duration_s=duration_s, dropped=dropped, latencies_ms=latencies)


def run_phase(phase: HttpPhase, *, timeout_s: float | None = None) -> LoadResult:
    """Run k6 for one phase and return what it measured (raises if k6 fails or writes no summary)."""
    with tempfile.TemporaryDirectory(prefix="bench-k6-") as work:
        summary_path = Path(work) / "summary.json"
        spec = {**msgspec.to_builtins(phase), "summary_path": str(summary_path)}
        env = {
            **os.environ,
            "BENCH_SPEC": json.dumps(spec),
            "K6_NO_USAGE_REPORT": "true",
            # k6 must not pick up a stray K6_* setting from the caller's environment.
            "K6_OUT": "",
        }
        result = subprocess.run(
            [str(K6), "run", "--quiet", "--no-color", "--log-output=stderr", str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s or phase.duration_s + 60,
            check=False,
        )
        if not summary_path.exists():
            raise RuntimeError(f"k6 wrote no summary (exit {result.returncode}): {result.stderr[-2000:]}")
        return parse_summary(json.loads(summary_path.read_text()))

"""A profile of the hottest path: py-spy samples a running service process while k6 loads it.

Key design decision: py-spy attaches from outside (no code change, no in-process profiler skewing the
service) and samples non-blockingly, so the profiled process runs at full speed; the speedscope file is kept
under `bench/results/` and summarised (top functions by self and inclusive time) into the results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import ROOT
from bench.report import ProfileSummary

PY_SPY = Path(sys.executable).parent / "py-spy"


def summarise_speedscope(
    data: dict[str, Any], *, top: int = 15
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, top functions by self time %, top functions by inclusive time %) of a speedscope profile;
    frames are merged per function (name and file), whatever the line."""
    frames = data["shared"]["frames"]
    labels = [f"{frame['name']} ({_short(frame.get('file', ''))})" for frame in frames]
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0.0
    for profile in data["profiles"]:
        weights = profile.get("weights") or [1] * len(profile["samples"])
        for stack, weight in zip(profile["samples"], weights, strict=True):
            if not stack:
                continue
            total += weight
            self_time[labels[stack[-1]]] += weight
            for label in {labels[index] for index in stack}:
                inclusive[label] += weight
    if total == 0:
        return 0, [], []

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(label, round(100.0 * weight / total, 1)) for label, weight in counter.most_common(top)]

    return int(total), share(self_time), share(inclusive)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile_processes(
    *, pids: dict[str, int], seconds: float, output_dir: Path, label: str, load: str, drive: Callable[[], object]
) -> list[ProfileSummary]:
    """Sample each named process with its own py-spy for `seconds` while `drive()` (a k6 run) loads them;
    writes `<output_dir>/profile-<process>-<label>.speedscope.json`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for process, pid in pids.items():
        output = output_dir / f"profile-{process}-{label}.speedscope.json"
        output.unlink(missing_ok=True)
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
        argv += ["--format", "speedscope", "--output", str(output), "--nonblocking"]
        spies[process] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), output)
    driver = threading.Thread(target=drive)
    driver.start()
    summaries: list[ProfileSummary] = []
    failures: list[str] = []
    try:
        for process, (spy, output) in spies.items():
            _, stderr = spy.communicate(timeout=seconds + 60)
            if spy.returncode != 0 or not output.exists():
                failures.append(f"py-spy could not profile {process} (exit {spy.returncode}): {stderr[-500:]}")
                continue
            samples, top_self, top_inclusive = summarise_speedscope(json.loads(output.read_text()))
            summaries.append(
                ProfileSummary(
                    tool="py-spy record --nonblocking --rate 200 (idle threads excluded)",
                    process=process,
                    load=load,
                    file=str(output.relative_to(ROOT)) if output.is_relative_to(ROOT) else str(output),
                    samples=samples,
                    top_self=top_self,
                    top_inclusive=top_inclusive,
                )
            )
    finally:
        driver.join()
    if failures and not summaries:
        raise RuntimeError("; ".join(failures))
    return summaries

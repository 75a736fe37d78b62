"""CPU time of the processes under test, read from `/proc/<pid>/stat` (utime + stime) before and after a phase.

Key design decision: no psutil; the kernel's per-process counters are exact, cost nothing to read and cover
each service process on its own (the stack's processes are direct children started without a shell).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> float:
    """utime + stime in seconds from the text of `/proc/<pid>/stat`.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`:
    there field 3 (state) comes first, so utime (field 14) and stime (field 15) are items 11 and 12."""
    rest = text[text.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """The process's CPU seconds so far, or None when it is gone or unreadable."""
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """Snapshots of several named processes' CPU time; `delta` gives the seconds spent between two snapshots."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> dict[str, float]:
        taken: dict[str, float] = {}
        for name, pid in self.pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                taken[name] = seconds
        return taken

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 3) for name in before if name in after}


def parse_rss_mb(status_text: str) -> float | None:
    """Resident memory in MiB from the text of `/proc/<pid>/status` (its `VmRSS:  1234 kB` line)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def rss_mb(pids: Mapping[str, int]) -> dict[str, float]:
    """Resident memory of each named process that is still there."""
    sizes: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            size = parse_rss_mb(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        if size is not None:
            sizes[name] = size
    return sizes


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished, waited-for children (how the k6 runs' own cost is measured)."""
    usage = os.times()
    return usage.children_user + usage.children_system

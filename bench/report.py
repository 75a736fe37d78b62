"""What a bench run produces: the results document (`bench/results/latest.json`) and the table printed at the end.

Key design decision: one shape for every scenario (phases of a LoadResult plus CPU per request per process
and ratios to a named baseline), so the JSON can be compared run to run by a script and the table is
generated from it rather than assembled by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from bench.stats import LoadResult, per_request, ratio

type Group = Literal["generator", "baseline", "api", "worker", "scheduler"]


class Phase(msgspec.Struct, kw_only=True):
    mode: str  # "fixed", "saturation", or a scenario's own step ("run", "scan", "claim")
    offered: str  # e.g. "20 req/s", "16 VUs"
    load: LoadResult
    # CPU seconds each measured process spent during the phase, and per successful request.
    cpu_s: dict[str, float] = {}
    cpu_s_per_request: dict[str, float] = {}
    # Sum over Caseflow's own processes (services, NATS, MongoDB).
    stack_cpu_s_per_request: float | None = None
    # The load generator's own CPU seconds per request (k6, or bench.loadgen).
    generator_cpu_s_per_request: float | None = None


def phase_of(
    mode: str,
    offered: str,
    load: LoadResult,
    cpu_s: dict[str, float],
    *,
    accounted: Sequence[str],
    generator_cpu_s: float | None = None,
) -> Phase:
    """A Phase with its CPU spread over the successful requests; `accounted` names the processes under test."""
    per = per_request(cpu_s, load.ok)
    accounted_per = [per[name] for name in accounted if name in per]
    return Phase(
        mode=mode,
        offered=offered,
        load=load,
        cpu_s=cpu_s,
        cpu_s_per_request=per,
        stack_cpu_s_per_request=round(sum(accounted_per), 6) if accounted_per else None,
        generator_cpu_s_per_request=(
            round(generator_cpu_s / load.ok, 6) if generator_cpu_s is not None and load.ok else None
        ),
    )


class Scenario(msgspec.Struct, kw_only=True):
    name: str
    group: Group
    description: str
    baseline: str | None = None
    phases: list[Phase] = []
    # "<metric>_<mode>": scenario / baseline for latencies, baseline / scenario for throughput, so that every
    # ratio reads "how many times worse than the baseline" (1.0 = no cost).
    ratios: dict[str, float | None] = {}
    setup_s: float | None = None
    context: dict[str, Any] = {}
    notes: list[str] = []

    def phase(self, mode: str) -> Phase | None:
        return next((p for p in self.phases if p.mode == mode), None)


class ProfileSummary(msgspec.Struct, kw_only=True):
    tool: str
    process: str
    load: str
    file: str
    samples: int
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]
    notes: list[str] = []


class Results(msgspec.Struct, kw_only=True):
    started_at: str
    finished_at: str = ""
    machine: dict[str, Any] = {}
    config: dict[str, Any] = {}
    scenarios: list[Scenario] = []
    profiles: list[ProfileSummary] = []
    # The stack's CPU-seconds per second with no load, by process, at the points named.
    idle_cpu: dict[str, dict[str, float]] = {}
    # Samples each service's /metrics exports at the end of the run: one series per request would show here.
    metrics_series: dict[str, int] = {}
    # Resident memory of each measured process at the same point, MiB.
    rss_mb: dict[str, float] = {}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    # Issue 16's goals as read off this run (bench.summary.Goal as plain data).
    goals: list[dict[str, Any]] = []


def compare(scenario: Scenario, baseline: Scenario) -> dict[str, float | None]:
    """Ratios of a scenario to its baseline, phase by phase of the same mode."""
    ratios: dict[str, float | None] = {}
    for phase in scenario.phases:
        base = baseline.phase(phase.mode)
        if base is None:
            continue
        ratios[f"p50_{phase.mode}"] = ratio(phase.load.p50_ms, base.load.p50_ms)
        ratios[f"p99_{phase.mode}"] = ratio(phase.load.p99_ms, base.load.p99_ms)
        ratios[f"throughput_{phase.mode}"] = ratio(base.load.throughput_rps, phase.load.throughput_rps)
    return ratios


def write(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def render(results: Results) -> str:
    """The human-readable tables: load and latency per phase, ratios, then CPU per request per process."""
    rows: list[list[str]] = []
    for scenario in results.scenarios:
        for phase in scenario.phases:
            load = phase.load
            rows.append(
                [
                    scenario.name,
                    phase.mode,
                    phase.offered,
                    _fmt(load.throughput_rps),
                    _fmt(load.p50_ms, 2),
                    _fmt(load.p95_ms, 2),
                    _fmt(load.p99_ms, 2),
                    f"{load.failed}/{load.requests}",
                    str(load.dropped),
                    _ms(phase.stack_cpu_s_per_request),
                    _ms(phase.generator_cpu_s_per_request),
                    _fmt(scenario.ratios.get(f"p50_{phase.mode}"), 2),
                    _fmt(scenario.ratios.get(f"throughput_{phase.mode}"), 2),
                    scenario.baseline or "",
                ]
            )
    header = [
        "scenario",
        "phase",
        "offered",
        "ok/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "failed",
        "dropped",
        "stack CPU ms/req",
        "gen CPU ms/req",
        "p50 x base",
        "base/tput",
        "baseline",
    ]
    parts = [_table(header, rows)]
    processes = sorted({name for s in results.scenarios for p in s.phases for name in p.cpu_s_per_request})
    cpu_rows = [
        [f"{scenario.name}/{phase.mode}", *(_ms(phase.cpu_s_per_request.get(name)) for name in processes)]
        for scenario in results.scenarios
        for phase in scenario.phases
        if phase.cpu_s_per_request
    ]
    if cpu_rows:
        parts.append("CPU ms per successful request, by process\n" + _table(["phase", *processes], cpu_rows))
    for scenario in results.scenarios:
        if scenario.setup_s is not None or scenario.notes:
            setup = f" (setup {scenario.setup_s:.1f} s)" if scenario.setup_s is not None else ""
            notes = "".join(f"\n    - {note}" for note in scenario.notes)
            parts.append(f"{scenario.name}{setup}: {scenario.description}{notes}")
    for profile in results.profiles:
        top = "\n".join(f"    {share:5.1f}%  {name}" for name, share in profile.top_self[:10])
        parts.append(f"profile {profile.process} under {profile.load} ({profile.file}), self time:\n{top}")
    for point, cpu in results.idle_cpu.items():
        busy = ", ".join(f"{name} {share * 100:.1f}%" for name, share in sorted(cpu.items(), key=lambda i: -i[1]))
        parts.append(f"stack idle CPU ({point}), % of one core: {busy}")
    if results.metrics_series:
        series = ", ".join(f"{name} {count:,}" for name, count in results.metrics_series.items())
        parts.append(f"Prometheus samples per service at the end: {series}")
    if results.rss_mb:
        sizes = ", ".join(f"{name} {size:,.0f}" for name, size in results.rss_mb.items())
        parts.append(f"resident memory (MiB) at the end: {sizes}")
    for name, reason in {**results.skipped, **results.errors}.items():
        parts.append(f"{name}: {reason}")
    return "\n\n".join(parts)

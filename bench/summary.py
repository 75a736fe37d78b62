"""The goals of issue 16, each as a ratio read off one run's scenarios, with where a missed goal's cost goes.

Key design decision: a goal is computed only from figures of the same run (a scenario against its baseline at
the same mode), and a missed one names the process that spends the most CPU per request above the baseline,
read from the per-process CPU the bench already measures; a goal whose scenarios did not run is "-" rather than
a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import msgspec

from bench.report import Phase, Results, Scenario

CREATE = "POST /cases"
GET_CASE = "GET /cases/{id}"
LIST = "GET /cases (page of 50)"
INSERT = "baseline: MongoDB insert_one"
FIND = "baseline: MongoDB find_one"
BARE_LIST = "baseline: MongoDB list page"
SCHEDULER_PREFIX = "scheduler"
BURST_PREFIX = "burst:"
TWO_GATEWAYS = "two gateways"
WORKER_PREFIX = "worker:"
WORKER_WRITES_PREFIX = "worker writes"
# `GET /cases/{id}`'s latency goal is read at a fixed rate of this share of its saturation throughput (same run).
GET_CASE_SATURATION_SHARE: Final = 0.7
GET_CASE_AT_SHARE_MODE: Final = "fixed at 70% of saturation"
# The case service scans for due cases once per SCHEDULER_INTERVAL_SECONDS (1 s by default).
SCANS_PER_SECOND: Final = 1.0


class Goal(msgspec.Struct, kw_only=True):
    name: str
    value: float | None
    # e.g. ">= 0.40"; `met` compares `value` with it (None when not measured).
    goal: str
    met: bool | None
    # What `value` is, in words and figures.
    detail: str = ""
    # For a missed goal: the process spending the difference, and its CPU ms per request above the baseline's.
    spender: str | None = None


def _find(results: Results, name: str) -> Scenario | None:
    return next((s for s in results.scenarios if s.name == name or s.name.startswith(name)), None)


def _phase(results: Results, name: str, mode: str) -> Phase | None:
    scenario = _find(results, name)
    return scenario.phase(mode) if scenario else None


def spender(ours: Phase, base: Phase | None) -> tuple[str, float] | None:
    """The process whose CPU per request exceeds the baseline's by the most (ms)."""
    theirs = base.cpu_s_per_request if base else {}
    extra = {name: (cpu - theirs.get(name, 0.0)) * 1000 for name, cpu in ours.cpu_s_per_request.items()}
    if not extra:
        return None
    name = max(extra, key=lambda n: extra[n])
    return name, round(extra[name], 2)


def _goal(name: str, value: float | None, goal: str, test: Callable[[float], bool], detail: str) -> Goal:
    return Goal(
        name=name,
        value=None if value is None else round(value, 3),
        goal=goal,
        met=None if value is None else test(value),
        detail=detail,
    )


def _throughput_goal(results: Results, name: str, ours_name: str, base_name: str, minimum: float) -> Goal:
    ours, base = _phase(results, ours_name, "saturation"), _phase(results, base_name, "saturation")
    if ours is None or base is None or not base.load.throughput_rps:
        return _goal(name, None, f">= {minimum:.2f}", lambda _: False, "not measured")
    value = ours.load.throughput_rps / base.load.throughput_rps
    goal = _goal(
        name,
        value,
        f">= {minimum:.2f}",
        lambda v: v >= minimum,
        f"{ours.load.throughput_rps:,.1f}/s vs {base.load.throughput_rps:,.1f}/s at saturation",
    )
    if goal.met is False:
        found = spender(ours, base)
        goal.spender = f"{found[0]} +{found[1]} ms CPU/req" if found else None
    return goal


def pipeline_limit(insert_rps: float, writes_per_case: float) -> float:
    """Cases per second to their first email if MongoDB did nothing but those writes at `insert_one`'s rate."""
    return insert_rps / writes_per_case


def _pipeline_goal(results: Results) -> Goal:
    """Create → first email (the worker scenario) ÷ its own limit: `insert_one` throughput ÷ the MongoDB writes a
    case needs up to its first email, as counted in this run (the `worker writes` step)."""
    name, target = "pipeline, create → first email ÷ its limit (insert_one ÷ writes per case)", ">= 0.50"
    run, insert = _phase(results, WORKER_PREFIX, "run"), _phase(results, INSERT, "saturation")
    counted = _find(results, WORKER_WRITES_PREFIX)
    writes = counted.context.get("writes_per_case") if counted else None
    if run is None or insert is None or not insert.load.throughput_rps or not writes:
        return _goal(name, None, target, lambda _: False, "not measured")
    limit = pipeline_limit(insert.load.throughput_rps, float(writes))
    assert counted is not None
    goal = _goal(
        name,
        run.load.throughput_rps / limit,
        target,
        lambda v: v >= 0.5,
        f"{run.load.throughput_rps:,.1f} cases/s to their first email vs a limit of {limit:,.1f}/s = "
        f"{insert.load.throughput_rps:,.1f} insert_one/s ÷ {float(writes):g} writes per case (counted: "
        f"{counted.context.get('request_path_writes_per_case')} on the request path + "
        f"{counted.context.get('pipeline_writes_per_case')} after it)",
    )
    if goal.met is False:
        # The baseline of one case is `writes` inserts' worth of the baseline's CPU.
        scaled = msgspec.structs.replace(
            insert, cpu_s_per_request={n: cpu * float(writes) for n, cpu in insert.cpu_s_per_request.items()}
        )
        found = spender(run, scaled)
        goal.spender = f"{found[0]} +{found[1]} ms CPU/case" if found else None
    return goal


def _read_latency_goal(results: Results) -> Goal:
    """p99 of `GET /cases/{id}` at a fixed rate of 70 % of its saturation throughput (both from this run)."""
    name = f"GET /cases/{{id}} p99 at {GET_CASE_SATURATION_SHARE:.0%} of its saturation (ms)"
    ours, saturated = _phase(results, GET_CASE, GET_CASE_AT_SHARE_MODE), _phase(results, GET_CASE, "saturation")
    if ours is None or saturated is None or not math.isfinite(ours.load.p99_ms):
        return _goal(name, None, "<= 50", lambda _: False, "not measured")
    load = ours.load
    goal = _goal(
        name,
        load.p99_ms,
        "<= 50",
        lambda v: v <= 50.0,
        f"p99 {load.p99_ms:,.1f} ms (p50 {load.p50_ms:,.1f}) at {ours.offered}, {saturated.load.throughput_rps:,.1f}/s "
        f"at saturation; {load.failed} failed, {load.dropped} dropped",
    )
    if goal.met is False:
        found = spender(ours, _phase(results, FIND, "fixed"))
        goal.spender = f"{found[0]} +{found[1]} ms CPU/req" if found else None
    return goal


def outreach_note(results: Results) -> str:
    """Whether the create phases measured the request path alone (their outreach held back, nothing sent)."""
    create = _find(results, CREATE)
    held: dict[str, dict[str, Any]] = create.context.get("outreach_held", {}) if create else {}
    if not held or not all(phase.get("held") for phase in held.values()):
        return "; outreach NOT held back (the phase pays for first emails too)"
    leaked = sum(int(phase.get("emails_while_held", 0)) for phase in held.values())
    if leaked:
        return (
            f"; {leaked} emails sent while outreach was held (a phase longer than CREATE_CONFIRM_GRACE_SECONDS "
            "lets the create reconciler start held cases)"
        )
    return "; outreach held back (0 emails during the phases)"


def goals(results: Results) -> list[Goal]:
    found: list[Goal] = [
        _throughput_goal(results, "POST /cases ÷ insert_one", CREATE, INSERT, 0.40),
        _throughput_goal(results, "GET /cases/{id} ÷ find_one", GET_CASE, FIND, 0.50),
        _throughput_goal(results, "GET /cases page ÷ bare find, same filter/sort/limit", LIST, BARE_LIST, 0.30),
    ]
    create, insert = _phase(results, CREATE, "saturation"), _phase(results, INSERT, "saturation")
    mongo_create = create.cpu_s_per_request.get("mongodb") if create else None
    mongo_insert = insert.cpu_s_per_request.get("mongodb") if insert else None
    value = mongo_create / mongo_insert if mongo_create and mongo_insert else None
    found.append(
        _goal(
            "MongoDB CPU per create ÷ per insert_one",
            value,
            "<= 2.5",
            lambda v: v <= 2.5,
            f"{mongo_create * 1000:.1f} ms vs {mongo_insert * 1000:.1f} ms"
            if mongo_create and mongo_insert
            else "not measured",
        )
    )
    if found[-1].met is False:
        counted = _find(results, WORKER_WRITES_PREFIX)
        writes = counted.context.get("request_path_writes_per_case") if counted else None
        found[-1].spender = (
            f"mongodb (the {writes} writes a create makes, counted in this run)"
            if writes is not None
            else "mongodb (the writes a create makes; see the create path's command count)"
        )
    for create_goal in (found[0], found[-1]):
        if create_goal.met is not None:
            create_goal.detail += outreach_note(results)
    idle = _phase(results, SCHEDULER_PREFIX, "idle scan")
    per_scan = idle.stack_cpu_s_per_request if idle else None
    # With timers on JetStream: CPU per second of an idle window (timers armed, the scheduler's and the outbox
    # relay's loops running), plus one safety scan per SCHEDULER_SAFETY_SCAN_SECONDS.
    timers_idle = _phase(results, SCHEDULER_PREFIX, "idle")
    scheduler = _find(results, SCHEDULER_PREFIX)
    safety_every = float(scheduler.context.get("safety_scan_seconds", 0) or 0) if scheduler else 0.0
    watched = timers_idle or idle
    busiest = (
        max(watched.cpu_s_per_request, key=lambda n: watched.cpu_s_per_request[n])
        if watched and watched.cpu_s_per_request
        else None
    )
    # With timers the safety round is one query (due cases, passed leases, unconfirmed creates), measured apart;
    # a run without that phase falls back to the due scan.
    round_phase = _phase(results, SCHEDULER_PREFIX, "idle safety round")
    per_round = round_phase.stack_cpu_s_per_request if round_phase else per_scan
    if timers_idle is not None and timers_idle.stack_cpu_s_per_request is not None and per_round and safety_every:
        share: float | None = timers_idle.stack_cpu_s_per_request + per_round / safety_every
        detail = (
            f"{timers_idle.stack_cpu_s_per_request * 1000:.0f} ms of CPU per idle second with every timer armed, "
            f"+ one {per_round * 1000:.0f} ms safety round every {safety_every:g} s"
        )
    else:
        share = per_scan * SCANS_PER_SECOND if per_scan is not None else None
        detail = (
            f"{per_scan * 1000:.0f} ms of CPU per scan, one scan a second" if per_scan is not None else "not measured"
        )
    found.append(_goal("scheduler idle, none due: share of a core", share, "<= 0.05", lambda v: v <= 0.05, detail))
    if found[-1].met is False and busiest is not None:
        found[-1].spender = busiest
    burst = _find(results, BURST_PREFIX)
    counts = burst.context.get("counts", {}) if burst else {}
    unexpected = counts.get("5xx_unexpected") if burst else None
    found.append(_pipeline_goal(results))
    found.append(_read_latency_goal(results))
    found.append(
        _goal(
            "burst: 5xx other than 503 with Retry-After",
            None if unexpected is None else float(unexpected),
            "== 0",
            lambda v: v == 0,
            f"{counts}, slowest {burst.context.get('max_latency_ms')} ms" if burst else "not measured",
        )
    )
    two = _find(results, TWO_GATEWAYS)
    granted, expected = (
        (two.context.get("throttle_granted"), two.context.get("throttle_expected")) if two else (None, None)
    )
    found.append(
        _goal(
            "two gateways: creates granted ÷ the shared burst",
            granted / expected if granted is not None and expected else None,
            "0.90..1.10",
            lambda v: 0.9 <= v <= 1.1,
            f"{granted} requests past the throttle (not 429) for {expected} tokens, over two gateways"
            if two
            else "not measured",
        )
    )
    return found


def render_goals(found: list[Goal]) -> str:
    rows = [
        [
            g.name,
            "-" if g.value is None else f"{g.value:,.3f}",
            g.goal,
            {True: "met", False: "MISSED", None: "-"}[g.met],
            g.detail,
            g.spender or "",
        ]
        for g in found
    ]
    header = ["goal (issue 16)", "value", "target", "", "measured", "difference spent in"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""`python -m bench` (`make bench`): start (or reach) the stack, run every scenario against its baselines,
write `bench/results/latest.json` and print the tables.

Key design decision: a scenario that fails is recorded under `errors` and the run goes on, so one broken
piece never costs the numbers of all the others; the exit status is non-zero when anything failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgspec

from bench.config import BenchConfig, ConfigError
from bench.cpu import rss_mb
from bench.k6 import K6
from bench.report import Results, Scenario, render, write
from bench.runner import (
    Runner,
    list_case_ids,
    pending_input_case_ids,
    prepare_input_cases,
    profile,
    worker_scenario,
)
from bench.scheduler import run_scheduler
from bench.stack import local_target, metric_series, target
from bench.stats import ratio
from bench.summary import Goal, goals, render_goals
from bench.writes import COUNT_STACK_ENV, count_writes

log = logging.getLogger("bench")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _machine(config: BenchConfig) -> dict[str, Any]:
    k6_version = subprocess.run([str(K6), "version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "k6": k6_version,
        "mongodb": f"embedded mongoeco ({config.mongo_engine} engine)" if not config.url else "external",
        "load_average_at_start": os.getloadavg(),
    }


def _step(results: Results, name: str, action: Callable[[], object]) -> None:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        action()
    except Exception as exc:
        log.debug("step failed", exc_info=True)
        results.errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc(file=sys.stderr)
    print(f"bench: {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def run(config: BenchConfig) -> Results:
    results = Results(started_at=_now(), machine=_machine(config), config=_public(config))
    if set(config.only) - {"scheduler"}:
        run_against_stack(config, results)
    if config.wants("worker"):
        if config.url:
            results.skipped["worker writes"] = "needs a stack of the bench's own (it starts a small one to count)"
        else:
            _step(results, "worker writes", lambda: results.scenarios.append(write_count_scenario(config)))
    if config.wants("scheduler"):
        _step(results, "scheduler", lambda: results.scenarios.append(scheduler_scenario(config, results)))
    results.goals = [msgspec.to_builtins(goal) for goal in goals(results)]
    results.finished_at = _now()
    return results


def scheduler_scenario(config: BenchConfig, results: Results) -> Scenario:
    scenario = asyncio.run(
        run_scheduler(
            cases=config.scheduler_cases,
            due=config.scheduler_due,
            on_setup=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True),
        )
    )
    baseline = next((s for s in results.scenarios if s.name == "baseline: MongoDB find_one"), None)
    scan, base = scenario.phase("scan"), baseline.phase("fixed") if baseline else None
    if scan is not None and base is not None:
        scenario.ratios = {"p50_scan": ratio(scan.load.p50_ms, base.load.p50_ms)}
    return scenario


def write_count_scenario(config: BenchConfig) -> Scenario:
    """The MongoDB writes a case needs up to its first email, on a small stack of its own (bench/writes.py)."""
    with local_target(config, env_overrides=COUNT_STACK_ENV, baselines=False) as reached:
        return count_writes(Runner(config, reached), cases=config.write_count_cases, timeout_s=config.worker_timeout_s)


def run_against_stack(config: BenchConfig, results: Results) -> None:
    scenarios: list[Scenario] = results.scenarios
    with target(config) as reached:
        runner = Runner(config, reached)
        ids_file = reached.work_dir / "case-ids.json"
        results.idle_cpu["start"] = runner.idle_cpu()
        if config.wants("generator"):
            _step(results, "generator", lambda: scenarios.extend(runner.generator_ceiling()))
        if config.wants("baselines"):
            _step(results, "baselines", lambda: scenarios.extend(runner.baselines()))
        if config.wants("create_case"):
            _step(results, "create_case", lambda: scenarios.append(runner.create_case()))

        def write_ids() -> None:
            ids = list_case_ids(reached, limit=1000)
            if not ids:
                raise RuntimeError("the bench client has no cases to read (run create_case too)")
            ids_file.write_text(json.dumps(ids))

        if config.wants("get_case") or config.wants("profile") or config.wants("two_gateways"):
            _step(results, "case ids", write_ids)
        if config.wants("get_case") and ids_file.exists():
            _step(results, "get_case", lambda: scenarios.append(runner.get_case(ids_file)))
        if config.wants("list_cases"):
            _step(results, "list_cases", lambda: scenarios.append(runner.list_cases()))

            def list_baseline() -> None:
                scenario = runner.list_baseline()
                if scenario is None:
                    results.skipped["baseline: MongoDB list page"] = "needs MongoDB and the bench client's cases"
                else:
                    scenarios.append(scenario)

            _step(results, "list baseline", list_baseline)
        if config.wants("burst"):
            _step(results, "burst", lambda: scenarios.append(runner.burst_creates()))
        if config.wants("two_gateways") and ids_file.exists():
            if reached.extra_gateway is None:
                results.skipped["two_gateways"] = "needs a stack of the bench's own (it starts two more gateways)"
            else:
                _step(results, "two_gateways", lambda: scenarios.append(runner.two_gateways(ids_file)))
        if config.wants("worker"):
            if reached.simulator_url is None:
                results.skipped["worker"] = "needs the AgentMail simulator (BENCH_SIM_URL)"
            else:
                _step(results, "worker", lambda: scenarios.append(worker_scenario(runner)))
        if config.wants("provide_input"):
            if reached.mongo_url is None:
                results.skipped["provide_input"] = "needs MongoDB to prepare INPUT_NEEDED cases (BENCH_MONGO_URL)"
            else:

                def provide_input() -> None:
                    candidates = list_case_ids(reached, limit=20_000)
                    asyncio.run(prepare_input_cases(reached, candidates))
                    pending = asyncio.run(pending_input_case_ids(reached))
                    input_file = reached.work_dir / "input-ids.json"
                    input_file.write_text(json.dumps(pending))
                    scenarios.append(runner.provide_input(input_file, len(pending)))

                _step(results, "provide_input", provide_input)
        results.idle_cpu["after the scenarios"] = runner.idle_cpu()
        results.metrics_series = metric_series(reached.metrics_urls)
        results.rss_mb = rss_mb({name: reached.pids[name] for name in reached.stack_processes if name in reached.pids})
        if config.wants("profile") and ids_file.exists():
            if reached.gateway_pid is None and reached.case_pid is None:
                results.skipped["profile"] = "needs the gateway's or case service's pid (BENCH_PIDS)"
            else:
                output_dir = config.results_path.parent
                _step(results, "profile", lambda: results.profiles.extend(profile(runner, ids_file, output_dir)))


def _public(config: BenchConfig) -> dict[str, Any]:
    """The configuration as recorded in the results (the API key left out)."""
    public = asdict(config)
    public["api_key"] = "<set>" if config.api_key else None
    public["results_path"] = str(config.results_path)
    return public


class Terminated(BaseException):
    """SIGTERM, raised where the run is: it unwinds like Ctrl-C, so each `with` block stops what it started."""


def _terminate(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stack's own stop short
    raise Terminated


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = BenchConfig.from_env()
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    # Python's default for SIGTERM ends the process at once, leaving the stack it started running.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = run(config)
    except (Terminated, KeyboardInterrupt) as stop:
        print("bench: stopped before the end; its processes are stopped, no results written", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    write(results, config.results_path)
    print(render(results))
    print("\n" + render_goals([msgspec.convert(goal, Goal) for goal in results.goals]))
    print(f"\nresults: {config.results_path}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The bench's pure helpers: percentile maths, k6 summary and /proc parsing, ratios, report shape, settings.

Speed itself is never asserted in tests (see bench/README.md): these check only that the numbers are computed
and reported correctly.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import msgspec
import pytest

from bench.burst import Answer, Burst
from bench.config import BenchConfig, ConfigError
from bench.cpu import CLOCK_TICKS, parse_rss_mb, parse_stat
from bench.hold import rfc3339
from bench.k6 import parse_summary
from bench.profiling import summarise_speedscope
from bench.report import Phase, Results, Scenario, compare, render
from bench.runner import at_share, new_case_body, slug
from bench.scheduler import scheduled_documents
from bench.stats import LoadResult, per_request, percentile, ratio, summarise
from bench.summary import GET_CASE_AT_SHARE_MODE, goals, outreach_note, pipeline_limit, render_goals
from bench.writes import per_case, writes_between
from shared.contracts.case import NOTHING_SCHEDULED, NewCase


def load(**overrides: Any) -> LoadResult:
    values: dict[str, Any] = {
        "requests": 100,
        "failed": 0,
        "duration_s": 10.0,
        "throughput_rps": 10.0,
        "p50_ms": 2.0,
        "p95_ms": 4.0,
        "p99_ms": 8.0,
        "max_ms": 9.0,
        "mean_ms": 2.5,
    }
    return LoadResult(**{**values, **overrides})


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_of_nothing_is_nan_and_bad_quantiles_are_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summarise_counts_only_successes_in_throughput() -> None:
    result = summarise([1.0, 2.0, 3.0, 4.0], failed=1, duration_s=2.0, dropped=3)
    assert (result.requests, result.failed, result.ok, result.dropped) == (4, 1, 3, 3)
    assert result.throughput_rps == 1.5
    assert result.p50_ms == 2.5
    assert result.max_ms == 4.0
    assert result.mean_ms == 2.5


def test_cpu_per_request_and_ratios() -> None:
    assert per_request({"gateway": 1.5, "case": 0.5}, 1000) == {"gateway": 0.0015, "case": 0.0005}
    assert per_request({"gateway": 1.0}, 0) == {}
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


def test_parse_stat_reads_utime_and_stime_after_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "0", "0", "250", "50"] + ["0"] * 39
    text = f"4242 (python (x) y) {' '.join(fields)}"
    assert parse_stat(text) == (250 + 50) / CLOCK_TICKS


def test_parse_rss_reads_the_vmrss_line() -> None:
    assert parse_rss_mb("Name:\tpython\nVmPeak:\t 9999 kB\nVmRSS:\t  102400 kB\n") == 100.0
    assert parse_rss_mb("Name:\tkthreadd\n") is None


def test_parse_summary_reads_k6_handle_summary_json() -> None:
    data = {
        "state": {"testRunDurationMs": 10_000.0},
        "metrics": {
            "http_reqs": {"values": {"count": 1000, "rate": 100.0}},
            "http_req_failed": {"values": {"passes": 10, "fails": 990, "rate": 0.01}},
            "dropped_iterations": {"values": {"count": 5}},
            "http_req_duration{expected_response:true}": {
                "values": {"med": 3.5, "p(95)": 9.25, "p(99)": 12.0, "max": 40.0, "avg": 4.0}
            },
            "http_req_duration": {"values": {"med": 99.0}},
        },
    }
    result = parse_summary(data)
    assert (result.requests, result.failed, result.dropped) == (1000, 10, 5)
    assert result.throughput_rps == 99.0
    assert (result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms, result.mean_ms) == (3.5, 9.25, 12.0, 40.0, 4.0)


def test_compare_reads_every_ratio_as_times_worse_than_the_baseline() -> None:
    base = Scenario(
        name="base",
        group="baseline",
        description="",
        phases=[Phase(mode="fixed", offered="20 req/s", load=load(p50_ms=1.0, p99_ms=2.0, throughput_rps=20.0))],
    )
    ours = Scenario(
        name="ours",
        group="api",
        description="",
        phases=[
            Phase(mode="fixed", offered="20 req/s", load=load(p50_ms=5.0, p99_ms=10.0, throughput_rps=10.0)),
            Phase(mode="saturation", offered="16 VUs", load=load()),
        ],
    )
    assert compare(ours, base) == {"p50_fixed": 5.0, "p99_fixed": 5.0, "throughput_fixed": 2.0}


def test_results_round_trip_as_json_and_render_as_a_table() -> None:
    scenario = Scenario(
        name="GET /cases/{id}",
        group="api",
        description="read one case",
        baseline="baseline: bare GET",
        phases=[
            Phase(
                mode="fixed",
                offered="20 req/s",
                load=load(),
                cpu_s_per_request={"gateway": 0.001, "case": 0.002},
                stack_cpu_s_per_request=0.003,
            )
        ],
        ratios={"p50_fixed": 4.0},
    )
    results = Results(started_at="2026-01-01T00:00:00+00:00", scenarios=[scenario], errors={"worker": "boom"})
    decoded = msgspec.json.decode(msgspec.json.encode(results), type=Results)
    assert decoded == results
    table = render(results)
    assert "GET /cases/{id}" in table
    assert "3.00" in table  # stack CPU in ms per request
    assert "worker: boom" in table


def test_config_defaults_and_errors_name_the_variable() -> None:
    config = BenchConfig.from_env({})
    assert (config.duration_s, config.rate, config.vus, config.scheduler_cases) == (10.0, 20, 16, 100_000)
    assert config.wants("scheduler")
    assert BenchConfig.from_env({"BENCH_ONLY": "get_case, worker"}).only == ("get_case", "worker")
    with pytest.raises(ConfigError, match="BENCH_DURATION"):
        BenchConfig.from_env({"BENCH_DURATION": "soon"})
    with pytest.raises(ConfigError, match="BENCH_ONLY"):
        BenchConfig.from_env({"BENCH_ONLY": "everything"})
    with pytest.raises(ConfigError, match="BENCH_API_KEY"):
        BenchConfig.from_env({"BENCH_URL": "http://127.0.0.1:8000"})
    assert BenchConfig.from_env({"BENCH_PIDS": "gateway=12, case=34"}).pids == {"gateway": 12, "case": 34}


def test_bench_bodies_are_valid_cases_with_silent_counterparties() -> None:
    body = msgspec.convert(new_case_body(slug("POST /cases/{id}") + "-7"), NewCase)
    assert body.counterparty.address == "silent-post-cases-id-7@sim.example"


def test_scheduled_documents_have_the_requested_due_share() -> None:
    body = msgspec.convert(new_case_body("x"), NewCase)
    now = 1_000_000_000_000
    documents = scheduled_documents(count=1000, due=30, now=now, body=body)
    due = [d for d in documents if d["nextActionAt"] <= now and d["status"] == "RUNNING"]
    assert len(documents) == len({d["_id"] for d in documents}) == 1000
    assert len(due) == 30
    assert sum(d["nextActionAt"] == NOTHING_SCHEDULED for d in documents) == 100
    assert all(d["pendingCreate"] is False and d["outbox"] == [] for d in documents)


def test_speedscope_summary_merges_lines_of_a_function() -> None:
    data = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/work/main/app.py", "line": 1},
                {"name": "hot", "file": "/x/site-packages/lib.py", "line": 10},
                {"name": "hot", "file": "/x/site-packages/lib.py", "line": 12},
            ]
        },
        "profiles": [{"samples": [[0, 1], [0, 2], [0]], "weights": [1, 1, 2]}],
    }
    samples, top_self, top_inclusive = summarise_speedscope(data)
    assert samples == 4
    assert top_self[0] == ("hot (lib.py)", 50.0)
    assert ("main (app.py)", 100.0) in top_inclusive


def saturated(name: str, rps: float, cpu: dict[str, float], **context: Any) -> Scenario:
    phase = Phase(mode="saturation", offered="16 VUs", load=load(throughput_rps=rps), cpu_s_per_request=cpu)
    return Scenario(name=name, group="api", description="", phases=[phase], context=context)


def test_goals_read_each_ratio_and_name_the_process_spending_a_missed_one() -> None:
    idle = Phase(mode="idle scan", offered="", load=load(), cpu_s_per_request={"mongodb": 0.5, "nats": 0.001})
    idle.stack_cpu_s_per_request = 0.501
    results = Results(
        started_at="",
        scenarios=[
            saturated("baseline: MongoDB insert_one", 80.0, {"mongodb": 0.010}),
            saturated("POST /cases", 40.0, {"mongodb": 0.020, "gateway": 0.001}),
            saturated("baseline: MongoDB find_one", 1000.0, {"mongodb": 0.0005}),
            saturated("GET /cases/{id}", 300.0, {"gateway": 0.0009, "case": 0.0007, "mongodb": 0.0008}),
            Scenario(name="scheduler scan (100,000 cases)", group="scheduler", description="", phases=[idle]),
            saturated("burst: 240 creates / 32 clients", 1.0, {}, counts={"201": 200, "503": 40, "5xx_unexpected": 0}),
            saturated("two gateways", 1.0, {}, throttle_granted=39, throttle_expected=40),
        ],
    )
    by_name = {goal.name: goal for goal in goals(results)}
    create = by_name["POST /cases ÷ insert_one"]
    assert (create.value, create.met) == (0.5, True)
    read = by_name["GET /cases/{id} ÷ find_one"]
    assert (read.value, read.met) == (0.3, False)
    assert read.spender == "gateway +0.9 ms CPU/req"
    assert by_name["GET /cases page ÷ bare find, same filter/sort/limit"].met is None
    mongo = by_name["MongoDB CPU per create ÷ per insert_one"]
    assert (mongo.value, mongo.met) == (2.0, True)
    scheduler = by_name["scheduler idle, none due: share of a core"]
    assert (scheduler.value, scheduler.met, scheduler.spender) == (0.501, False, "mongodb")
    assert by_name["burst: 5xx other than 503 with Retry-After"].met is True
    assert by_name["two gateways: creates granted ÷ the shared burst"].value == 0.975
    table = render_goals(list(by_name.values()))
    assert "MISSED" in table
    assert "gateway +0.9 ms CPU/req" in table


def test_burst_counts_only_503_with_retry_after_as_an_expected_5xx() -> None:
    answers = [Answer(201, False, 5.0), Answer(503, True, 1.0), Answer(503, False, 2.0), Answer(500, False, 3.0)]
    answers += [Answer(429, True, 1.0), Answer(0, False, 60_000.0)]
    done = Burst(answers=answers, elapsed_s=2.0)
    counts = done.counts()
    assert counts == {"201": 1, "429": 1, "503": 2, "other": 2, "5xx_unexpected": 2, "429_without_retry_after": 0}
    assert done.load(ok=[201, 429, 503]).failed == 2
    assert done.context()["max_latency_ms"] == 60_000.0


def test_with_timers_the_scheduler_goal_is_an_idle_second_plus_one_safety_scan_per_interval() -> None:
    scan = Phase(mode="idle scan", offered="", load=load(), cpu_s_per_request={"mongodb": 0.6})
    scan.stack_cpu_s_per_request = 0.6
    window = Phase(mode="idle", offered="", load=load(), cpu_s_per_request={"mongodb": 0.004, "nats": 0.006})
    window.stack_cpu_s_per_request = 0.01
    scheduler = Scenario(
        name="scheduler scan (100,000 cases)",
        group="scheduler",
        description="",
        phases=[scan, window],
        context={"safety_scan_seconds": 60.0},
    )
    by_name = {goal.name: goal for goal in goals(Results(started_at="", scenarios=[scheduler]))}
    goal = by_name["scheduler idle, none due: share of a core"]
    assert goal.value is not None
    assert round(goal.value, 6) == 0.02  # 10 ms per idle second + 600 ms every 60 s
    assert (goal.met, goal.spender) == (True, None)


def test_with_timers_the_safety_round_is_its_own_measured_query_when_the_run_has_it() -> None:
    scan = Phase(mode="idle scan", offered="", load=load(), cpu_s_per_request={"mongodb": 0.6})
    scan.stack_cpu_s_per_request = 0.6
    safety = Phase(mode="idle safety round", offered="", load=load(), cpu_s_per_request={"mongodb": 1.2})
    safety.stack_cpu_s_per_request = 1.2
    window = Phase(mode="idle", offered="", load=load(), cpu_s_per_request={"mongodb": 0.01})
    window.stack_cpu_s_per_request = 0.01
    scheduler = Scenario(
        name="scheduler scan (100,000 cases)",
        group="scheduler",
        description="",
        phases=[scan, safety, window],
        context={"safety_scan_seconds": 60.0},
    )
    by_name = {goal.name: goal for goal in goals(Results(started_at="", scenarios=[scheduler]))}
    goal = by_name["scheduler idle, none due: share of a core"]
    assert goal.value is not None
    assert round(goal.value, 6) == 0.03  # 10 ms per idle second + 1 200 ms every 60 s (the round, not the scan)
    assert "1200 ms safety round" in goal.detail


def test_a_consumer_pause_ends_at_an_rfc3339_utc_time() -> None:
    moment = dt.datetime(2026, 12, 1, 16, 5, 7, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(moment) == "2026-12-01T14:05:07.123Z"


def test_the_latency_phase_runs_at_a_whole_share_of_the_saturation_throughput() -> None:
    assert at_share(317.4, 0.7) == 222
    assert at_share(0.5, 0.7) == 1


def test_writes_are_inserts_updates_and_deletes_less_the_background() -> None:
    before = {"insert": 10, "query": 50, "update": 20, "delete": 1, "command": 99}
    after = {"insert": 70, "query": 400, "update": 100, "delete": 1, "command": 500}
    assert writes_between(before, after) == 140
    assert per_case(140, background_per_s=2.0, window_s=10.0, cases=20) == 6.0
    assert per_case(5, background_per_s=2.0, window_s=10.0, cases=20) == 0.0
    assert per_case(140, background_per_s=0.0, window_s=10.0, cases=0) is None


def test_the_pipeline_goal_is_emails_per_second_over_insert_one_divided_by_the_writes_a_case_needs() -> None:
    assert pipeline_limit(80.0, 8.0) == 10.0
    run = Phase(mode="run", offered="100 cases", load=load(throughput_rps=4.0), cpu_s_per_request={"mongodb": 0.12})
    worker = Scenario(name="worker: 100 cases → first email", group="worker", description="", phases=[run])
    counted = Scenario(
        name="worker writes: 20 cases → first email",
        group="worker",
        description="",
        context={"writes_per_case": 8.0, "request_path_writes_per_case": 3.0, "pipeline_writes_per_case": 5.0},
    )
    insert = saturated("baseline: MongoDB insert_one", 80.0, {"mongodb": 0.01})
    by_name = {goal.name: goal for goal in goals(Results(started_at="", scenarios=[insert, worker, counted]))}
    goal = by_name["pipeline, create → first email ÷ its limit (insert_one ÷ writes per case)"]
    assert (goal.value, goal.met) == (0.4, False)  # 4 cases/s against a limit of 80 / 8 = 10
    assert "8 writes per case" in goal.detail
    assert "3.0 on the request path + 5.0 after it" in goal.detail
    # The baseline of a case is 8 inserts' worth of MongoDB CPU (80 ms): 120 ms spent is 40 ms above it.
    assert goal.spender == "mongodb +40.0 ms CPU/case"
    without_count = {g.name: g for g in goals(Results(started_at="", scenarios=[insert, worker]))}
    assert without_count[goal.name].met is None


def test_the_read_latency_goal_is_the_p99_of_the_phase_at_70_percent_of_saturation() -> None:
    saturation = Phase(mode="saturation", offered="16 VUs", load=load(throughput_rps=300.0))
    at_share_load = load(throughput_rps=210.0, p50_ms=6.0, p99_ms=61.5, dropped=2)
    at_70 = Phase(
        mode=GET_CASE_AT_SHARE_MODE,
        offered="210 req/s",
        load=at_share_load,
        cpu_s_per_request={"gateway": 0.0012, "case": 0.0008, "mongodb": 0.0007},
    )
    read = Scenario(name="GET /cases/{id}", group="api", description="", phases=[saturation, at_70])
    find = Scenario(
        name="baseline: MongoDB find_one",
        group="baseline",
        description="",
        phases=[Phase(mode="fixed", offered="20 req/s", load=load(), cpu_s_per_request={"mongodb": 0.0005})],
    )
    by_name = {goal.name: goal for goal in goals(Results(started_at="", scenarios=[read, find]))}
    goal = by_name["GET /cases/{id} p99 at 70% of its saturation (ms)"]
    assert (goal.value, goal.goal, goal.met) == (61.5, "<= 50", False)
    assert "at 210 req/s, 300.0/s at saturation; 0 failed, 2 dropped" in goal.detail
    assert goal.spender == "gateway +1.2 ms CPU/req"
    met = msgspec.structs.replace(at_70, load=msgspec.structs.replace(at_share_load, p99_ms=12.0))
    read.phases = [saturation, met]
    assert {g.name: g for g in goals(Results(started_at="", scenarios=[read]))}[goal.name].met is True


def test_the_create_goals_say_whether_the_phases_held_their_outreach_back() -> None:
    held = {"fixed": {"held": True, "emails_while_held": 0}, "saturation": {"held": True, "emails_while_held": 0}}
    create = saturated("POST /cases", 40.0, {"mongodb": 0.020}, outreach_held=held)
    insert = saturated("baseline: MongoDB insert_one", 80.0, {"mongodb": 0.010})
    results = Results(started_at="", scenarios=[insert, create])
    assert outreach_note(results) == "; outreach held back (0 emails during the phases)"
    by_name = {goal.name: goal for goal in goals(results)}
    assert by_name["POST /cases ÷ insert_one"].detail.endswith("outreach held back (0 emails during the phases)")
    assert by_name["MongoDB CPU per create ÷ per insert_one"].detail.endswith("(0 emails during the phases)")
    counted = Scenario(
        name="worker writes: 20 cases → first email",
        group="worker",
        description="",
        context={"request_path_writes_per_case": 3.0},
    )
    dear = saturated("POST /cases", 40.0, {"mongodb": 0.030}, outreach_held=held)
    by_name = {g.name: g for g in goals(Results(started_at="", scenarios=[insert, dear, counted]))}
    mongo = by_name["MongoDB CPU per create ÷ per insert_one"]
    assert (mongo.value, mongo.met) == (3.0, False)
    assert mongo.spender == "mongodb (the 3.0 writes a create makes, counted in this run)"
    held["saturation"]["emails_while_held"] = 3
    assert outreach_note(results).startswith("; 3 emails sent while outreach was held")
    held["fixed"] = {"held": False}
    assert "NOT held back" in outreach_note(results)

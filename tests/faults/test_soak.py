"""The chaos soak inside `make test-faults`: the short run (60 cases, each fault kind at least once) must pass
every check; and the plan it runs is reproducible from its seed and as hard as issue 14 asks.

`SOAK_SEED` picks another seed (the default is fixed, so CI replays the same schedule); a failing run's
report, in the assertion message, names the seed and the command that replays it.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.soak import run_soak
from tests.faults.soak_plan import BEHAVIOURS, KILLABLE, SoakConfig, plan, short_config

SEED = int(os.environ.get("SOAK_SEED", "1414"))


def test_one_seed_gives_one_schedule_and_case_mix_and_another_seed_another() -> None:
    assert plan(SoakConfig(seed=SEED)) == plan(SoakConfig(seed=SEED))
    assert plan(SoakConfig(seed=SEED)).faults != plan(SoakConfig(seed=SEED + 1)).faults
    assert plan(SoakConfig(seed=SEED)).cases != plan(SoakConfig(seed=SEED + 1)).cases


def test_the_full_soak_covers_what_issue_14_asks_for() -> None:
    full = plan(SoakConfig(seed=SEED))
    assert len(full.cases) >= 300
    assert Counter(case.behaviour for case in full.cases).keys() == set(BEHAVIOURS)
    kills = Counter(fault.target for fault in full.of_kind("kill"))
    assert {name: kills[name] for name in KILLABLE} == {name: 2 for name in KILLABLE}
    assert len(full.of_kind("restart_nats")) >= 1
    assert len(full.of_kind("restart_mongodb")) >= 1
    for kind in ("agentmail_5xx", "agentmail_timeout", "agentmail_429", "agentmail_422", "model_5xx", "model_timeout"):
        assert full.of_kind(kind), kind
    (outage,) = full.of_kind("agentmail_outage")
    assert outage.duration_seconds > full.config.retry_budget_seconds
    assert full.of_kind("poison")


@pytest.mark.parametrize("config", [SoakConfig(seed=SEED), short_config(SEED)], ids=["full", "short"])
def test_faults_of_one_lane_never_overlap(config: SoakConfig) -> None:
    soak_plan = plan(config)
    lanes = {
        "processes": ("kill", "restart_nats", "restart_mongodb"),
        "agentmail": ("agentmail_5xx", "agentmail_timeout", "agentmail_429", "agentmail_422", "agentmail_outage"),
        "model": ("model_5xx", "model_timeout"),
    }
    for kinds in lanes.values():
        lane = sorted((f for f in soak_plan.faults if f.kind in kinds), key=lambda f: f.at_seconds)
        for earlier, later in itertools.pairwise(lane):
            assert earlier.at_seconds + earlier.duration_seconds <= later.at_seconds
        assert all(f.at_seconds + f.duration_seconds <= soak_plan.config.fault_phase_seconds for f in lane)


async def test_the_short_chaos_soak_passes_every_check(tmp_path: Path) -> None:
    checks, report = await run_soak(short_config(SEED), tmp_path)
    print(report)
    assert [check.name for check in checks if not check.passed] == [], report

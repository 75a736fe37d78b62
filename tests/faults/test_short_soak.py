"""The short chaos soak (60 cases, each fault kind at least once) must pass every check; `make test-faults`
runs it, so CI does.

`SOAK_SEED` picks another seed (the default is fixed, so every run replays the same schedule and case mix); a
failing run's report, in the assertion message, names the seed and the command that replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.soak import run_soak
from tests.faults.soak_plan import short_config

SEED = int(os.environ.get("SOAK_SEED", "1414"))


async def test_the_short_chaos_soak_passes_every_check(tmp_path: Path) -> None:
    checks, report = await run_soak(short_config(SEED), tmp_path)
    print(report)
    assert [check.name for check in checks if not check.passed] == [], report

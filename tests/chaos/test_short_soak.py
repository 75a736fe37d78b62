"""The short chaos soak (60 cases, each fault kind at least once) must pass every check (`make test-chaos`).

Not yet part of CI's `make test-faults`: on the merged code it still fails "one email per (case, attempt)" and
"no outreach for a create answered 5xx" for one email now and then (see docs/reliability.md). `SOAK_SEED` picks
another seed (the default is fixed, so runs replay the same schedule); a failing run's report, in the assertion
message, names the seed and the command that replays it.
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

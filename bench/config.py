"""The bench's settings, read from `BENCH_*` environment variables with defaults that keep `make bench` to a
few minutes on two cores.

Key design decision: every duration and size is a variable (nothing to edit to run longer or smaller), and a
bad value stops the run at once with the variable's name, like the services' own settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"

SCENARIOS = (
    "generator",
    "baselines",
    "create_case",
    "get_case",
    "list_cases",
    "burst",
    "two_gateways",
    "worker",
    "provide_input",
    "profile",
    "scheduler",
)


class ConfigError(Exception):
    pass


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}")
    return value


def _pids(raw: str) -> dict[str, int]:
    pids: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, pid = item.partition("=")
        if not pid.isdigit():
            raise ConfigError(f"BENCH_PIDS: {item!r} is not name=pid")
        pids[name] = int(pid)
    return pids


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    # Seconds of each measured phase, and of the warm-up before a scenario's phases.
    duration_s: float = 10.0
    warmup_s: float = 3.0
    # The fixed offered load (requests per second) of the GET scenarios and the non-HTTP baselines, and the VUs
    # (concurrent closed-loop clients) of every saturation phase.
    rate: int = 20
    # The fixed offered load of the POST scenarios and their baseline (creates are far dearer than reads).
    write_rate: int = 5
    vus: int = 16
    # k6's VU pool for the fixed-rate phases (arrivals beyond it are dropped, and reported).
    max_vus: int = 200
    worker_cases: int = 1000
    worker_concurrency: int = 8
    worker_timeout_s: float = 600.0
    # Cases of the write count (a small stack of its own, after the worker scenario: see bench/writes.py).
    write_count_cases: int = 20
    scheduler_cases: int = 100_000
    scheduler_due: int = 1000
    profile_s: float = 15.0
    mongo_engine: Literal["sqlite", "memory"] = "memory"
    only: tuple[str, ...] = SCENARIOS
    results_path: Path = DEFAULT_RESULTS
    # A running gateway instead of a stack of our own (see bench/README.md).
    url: str | None = None
    api_key: str | None = None
    mongo_url: str | None = None
    mongo_db: str = "caseflow"
    nats_url: str | None = None
    simulator_url: str | None = None
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BenchConfig:
        env = os.environ if environ is None else environ
        engine = env.get("BENCH_MONGO_ENGINE", "memory")
        if engine not in ("sqlite", "memory"):
            raise ConfigError("BENCH_MONGO_ENGINE: must be sqlite or memory")
        only = tuple(s.strip() for s in env.get("BENCH_ONLY", "").split(",") if s.strip()) or SCENARIOS
        unknown = sorted(set(only) - set(SCENARIOS))
        if unknown:
            raise ConfigError(f"BENCH_ONLY: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        url = env.get("BENCH_URL") or None
        if url and not env.get("BENCH_API_KEY"):
            raise ConfigError("BENCH_API_KEY: required with BENCH_URL (a key on a plan without a cap)")
        return cls(
            duration_s=_number(env, "BENCH_DURATION", 10.0, minimum=1),
            warmup_s=_number(env, "BENCH_WARMUP", 3.0, minimum=0),
            rate=int(_number(env, "BENCH_RATE", 20, minimum=1)),
            write_rate=int(_number(env, "BENCH_WRITE_RATE", 5, minimum=1)),
            vus=int(_number(env, "BENCH_VUS", 16, minimum=1)),
            max_vus=int(_number(env, "BENCH_MAX_VUS", 200, minimum=1)),
            worker_cases=int(_number(env, "BENCH_WORKER_CASES", 1000, minimum=1)),
            worker_concurrency=int(_number(env, "BENCH_WORKER_CONCURRENCY", 8, minimum=1)),
            worker_timeout_s=_number(env, "BENCH_WORKER_TIMEOUT", 600.0, minimum=1),
            write_count_cases=int(_number(env, "BENCH_WRITE_COUNT_CASES", 20, minimum=1)),
            scheduler_cases=int(_number(env, "BENCH_SCHEDULER_CASES", 100_000, minimum=1)),
            scheduler_due=int(_number(env, "BENCH_SCHEDULER_DUE", 1000, minimum=0)),
            profile_s=_number(env, "BENCH_PROFILE_SECONDS", 15.0, minimum=1),
            mongo_engine="memory" if engine == "memory" else "sqlite",
            only=only,
            results_path=Path(env.get("BENCH_RESULTS", str(DEFAULT_RESULTS))),
            url=url.rstrip("/") if url else None,
            api_key=env.get("BENCH_API_KEY") or None,
            mongo_url=env.get("BENCH_MONGO_URL") or None,
            mongo_db=env.get("BENCH_MONGO_DB", "caseflow"),
            nats_url=env.get("BENCH_NATS_URL") or None,
            simulator_url=(env.get("BENCH_SIM_URL") or "").rstrip("/") or None,
            pids=_pids(env.get("BENCH_PIDS", "")),
        )

    def wants(self, scenario: str) -> bool:
        return scenario in self.only

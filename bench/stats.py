"""Pure numbers for the bench: percentiles, latency summaries, CPU per request and ratios to baselines.

Key design decision: percentiles use linear interpolation between closest ranks (NumPy's default and k6's), so
a summary computed here from raw samples and one read from k6's `handleSummary` mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """One load phase as the generator saw it; latencies in milliseconds."""

    requests: int
    failed: int
    duration_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # Arrivals the generator could not start because every VU/slot was busy (open-model phases only).
    dropped: int = 0

    @property
    def ok(self) -> int:
        return self.requests - self.failed


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def load_result(
    *, requests: int, failed: int, duration_s: float, dropped: int, latencies_ms: Mapping[str, float]
) -> LoadResult:
    """A LoadResult from counts and the latency statistics `p50`, `p95`, `p99`, `max` and `mean` (ms)."""
    ok = requests - failed

    def stat(name: str) -> float:
        return round(float(latencies_ms.get(name, math.nan)), 3)

    return LoadResult(
        requests=requests,
        failed=failed,
        duration_s=round(duration_s, 3),
        throughput_rps=round(ok / duration_s, 2) if duration_s > 0 else 0.0,
        p50_ms=stat("p50"),
        p95_ms=stat("p95"),
        p99_ms=stat("p99"),
        max_ms=stat("max"),
        mean_ms=stat("mean"),
        dropped=dropped,
    )


def summarise(latencies_ms: Sequence[float], *, failed: int, duration_s: float, dropped: int = 0) -> LoadResult:
    """A LoadResult from raw per-request latencies (successful and failed requests alike)."""
    count = len(latencies_ms)
    stats = {"p50": percentile(latencies_ms, 50), "p95": percentile(latencies_ms, 95)}
    stats["p99"] = percentile(latencies_ms, 99)
    if latencies_ms:
        stats["max"], stats["mean"] = max(latencies_ms), sum(latencies_ms) / count
    return load_result(requests=count, failed=failed, duration_s=duration_s, dropped=dropped, latencies_ms=stats)


def per_request(cpu_seconds: Mapping[str, float], requests: int) -> dict[str, float]:
    """CPU seconds per successful request for each process (empty when nothing succeeded)."""
    if requests <= 0:
        return {}
    return {name: round(seconds / requests, 6) for name, seconds in cpu_seconds.items()}


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, rounded; None when either side is missing, NaN or zero."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return None
    return round(numerator / denominator, 2)

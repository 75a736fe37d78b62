"""Closed-loop HTTP bursts for the scenarios k6 does not express well: a fixed number of requests from a fixed
number of clients, each answer classified (201/429/503/other) and timed, spread over one or more gateways.

Key design decision: every answer is kept as (status, Retry-After present, latency), so the scenarios can
report exactly what the issue asks (no 5xx but a 503 with Retry-After, the slowest answer, how many of a
shared throttle's tokens were granted across gateways) instead of k6's pass/fail rate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stats import LoadResult, summarise


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no answer (transport error)
    retry_after: bool
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Burst:
    answers: list[Answer]
    elapsed_s: float

    def counts(self) -> dict[str, int]:
        """201/200/429/503 and `other`, plus `5xx_unexpected`: every 5xx but a 503 that carries Retry-After."""
        by_status = Counter(a.status for a in self.answers)
        known = {200, 201, 429, 503}
        return {
            **{str(status): by_status[status] for status in sorted(known) if by_status[status]},
            "other": sum(n for status, n in by_status.items() if status not in known),
            "5xx_unexpected": sum(
                1 for a in self.answers if a.status >= 500 and not (a.status == 503 and a.retry_after)
            ),
            "429_without_retry_after": sum(1 for a in self.answers if a.status == 429 and not a.retry_after),
        }

    def load(self, *, ok: Sequence[int]) -> LoadResult:
        """Every answer's latency; those outside `ok` count as failed."""
        failed = sum(1 for a in self.answers if a.status not in ok)
        return summarise([a.latency_ms for a in self.answers], failed=failed, duration_s=self.elapsed_s)

    def context(self) -> dict[str, Any]:
        return {
            "requests": len(self.answers),
            "counts": self.counts(),
            "max_latency_ms": round(max((a.latency_ms for a in self.answers), default=0.0), 1),
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def burst(
    *,
    urls: Sequence[str],
    method: str,
    path: str,
    headers: dict[str, str],
    count: int,
    concurrency: int,
    body: dict[str, Any] | None = None,
    paths: Sequence[str] | None = None,
    timeout_s: float = 60.0,
) -> Burst:
    """`count` requests from `concurrency` clients back to back; request n goes to `urls[n % len(urls)]` (and to
    `paths[n % len(paths)]` when given). POSTs carry a fresh Idempotency-Key and a unique body reference."""
    numbers = iter(range(count))
    answers: list[Answer] = []

    async def client(http: httpx.AsyncClient) -> None:
        for n in numbers:
            request_headers = dict(headers)
            content: bytes | None = None
            if body is not None:
                unique = uuid.uuid4().hex
                request_headers |= {"content-type": "application/json", "idempotency-key": unique}
                content = json.dumps(body).replace("__UNIQUE__", unique).encode()
            url = urls[n % len(urls)] + (paths[n % len(paths)] if paths else path)
            started = time.perf_counter()
            try:
                response = await http.request(method, url, headers=request_headers, content=content)
                status, retry_after = response.status_code, "retry-after" in response.headers
            except httpx.HTTPError:
                status, retry_after = 0, False
            answers.append(Answer(status, retry_after, (time.perf_counter() - started) * 1000))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Burst(answers=answers, elapsed_s=elapsed)


def spread(ids: Sequence[str], count: int) -> list[str]:
    """`/cases/{id}` paths cycling through `ids`."""
    return [f"/cases/{case_id}" for case_id in itertools.islice(itertools.cycle(ids), count)]

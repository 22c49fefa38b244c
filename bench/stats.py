"""Latency percentiles and a closed-loop load runner shared by the benchmarks."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one run's latencies, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


def median(values: Sequence[float]) -> float:
    """Return the median; with an even count, the mean of the two middle values."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an ascending sequence (`fraction` 0 to 1)."""
    if not ordered:
        raise ValueError("percentile() needs at least one value.")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(latencies_seconds: Sequence[float]) -> LatencySummary:
    ordered = sorted(latencies_seconds)
    return LatencySummary(
        p50_ms=percentile(ordered, 0.50) * 1000,
        p95_ms=percentile(ordered, 0.95) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        mean_ms=sum(ordered) / len(ordered) * 1000,
        max_ms=ordered[-1] * 1000,
    )


@dataclass
class LoadResult:
    """Outcome of running one operation over a list of items at a fixed concurrency.

    `outcomes` counts what each operation returned (an HTTP status, or "ok"); `errors`
    contains one line per exception, capped at `MAX_KEPT_ERRORS`.
    """

    name: str
    concurrency: int
    requests: int
    seconds: float
    latency: LatencySummary
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "latency": self.latency.to_dict(),
            "outcomes": dict(sorted(self.outcomes.items())),
            "error_count": self.error_count,
            "errors": self.errors,
            "cpu_cores": self.cpu,
        }


MAX_KEPT_ERRORS = 10


async def run_closed_loop(
    name: str,
    items: Sequence[Item],
    operation: Callable[[Item], Awaitable[str]],
    *,
    concurrency: int,
) -> LoadResult:
    """Run `operation` on every item with `concurrency` workers, each starting its next item
    as soon as the previous one finished, and time each call.

    The operation returns a short outcome label (such as "200"); an exception counts as an
    error and the run goes on.
    """
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    error_count = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, error_count
        while next_index < len(items):
            item = items[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                outcome = await operation(item)
            except Exception as error:
                error_count += 1
                outcome = "error"
                if len(errors) < MAX_KEPT_ERRORS:
                    errors.append(f"{type(error).__name__}: {error}")
            latencies.append(time.perf_counter() - started)
            outcomes[outcome] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        name=name,
        concurrency=concurrency,
        requests=len(latencies),
        seconds=elapsed,
        latency=summarize(latencies) if latencies else LatencySummary(0, 0, 0, 0, 0),
        outcomes=outcomes,
        errors=errors,
        error_count=error_count,
    )

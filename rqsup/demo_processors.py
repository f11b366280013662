"""Processors of the demo queues in configs/dev.toml.

Plain synchronous functions, JSON in and out, importing neither asyncio nor
redis: they run in sandboxed child processes (or threads) exactly as a real
application's processors would. Each gets a ``job`` with ``.id``, ``.name``,
``.data``, ``.attempts_made``, ``.update_progress(value)`` and ``.log(line)``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class DemoJob(Protocol):
    """The part of a job a processor may use."""

    id: str
    name: str
    data: Any
    attempts_made: int

    def update_progress(self, value: Any) -> None: ...

    def log(self, line: str) -> None: ...


def count_primes(job: DemoJob) -> dict[str, int]:
    """CPU work (``cpu`` queue): count primes below ``data["n"]`` by trial division.

    ``n`` = 200_000 takes roughly 100 ms of pure-Python work, enough to show
    why CPU-heavy jobs belong in child processes.
    """
    n = int((job.data or {}).get("n", 200_000))
    count = 0
    for candidate in range(2, n):
        if candidate > 3 and (candidate % 2 == 0 or candidate % 3 == 0):
            continue
        divisor = 5
        prime = True
        while divisor * divisor <= candidate:
            if candidate % divisor == 0 or candidate % (divisor + 2) == 0:
                prime = False
                break
            divisor += 6
        count += prime
    return {"n": n, "primes": count}


def flaky(job: DemoJob) -> str:
    """Fails its first ``data["failures"]`` attempts (default 2), then succeeds:
    shows retries with backoff (``flaky`` queue, attempts 3)."""
    failures = int((job.data or {}).get("failures", 2))
    if job.attempts_made < failures:
        raise ConnectionError(
            f"upstream said 503 (demo: attempt {job.attempts_made + 1} of a job that "
            f"fails {failures} time(s))"
        )
    return f"ok on attempt {job.attempts_made + 1}"


def slow_report(job: DemoJob) -> dict[str, int]:
    """Slow work that reports progress and logs (``slow`` queue): ``data["steps"]``
    steps (default 8) of ``data["step_s"]`` seconds (default 0.25)."""
    data = job.data or {}
    steps = int(data.get("steps", 8))
    step_s = float(data.get("step_s", 0.25))
    for step in range(1, steps + 1):
        time.sleep(step_s)
        job.update_progress(round(100 * step / steps))
        job.log(f"page {step} of {steps} rendered")
    return {"pages": steps}

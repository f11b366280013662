"""Processors for benchmarks/bench_supervisor.py.

They run in the supervisor's child processes (mode "process"), in threads or
in the event loop, so the module imports nothing from rqsup and nothing heavy:
the forkserver preloads it, and each child imports it again at boot. The
children find it because the repository root is on ``sys.path`` (the
benchmark puts it there; ``rqsup start`` gets it through ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop(job: Any) -> None:
    """Does nothing: what is left is the cost of dispatching a job."""
    return None


async def noop_async(job: Any) -> None:
    """The same, as a coroutine, for mode "async"."""
    return None


def burn(loops: int) -> int:
    """Pure-Python CPU work (holds the GIL the whole time); ~linear in ``loops``."""
    x = 0
    for i in range(loops):
        x = (x + i * i) % 1_000_003
    return x


def cpu(job: Any) -> int:
    """``burn(job.data["loops"])``: the benchmark calibrates ``loops`` for a duration."""
    return burn(int(job.data["loops"]))


def sleep_s(job: Any) -> float:
    """Sleeps ``job.data["s"]`` seconds. With ``job.data["mark"]`` (a directory),
    first writes ``<mark>/<job id>-<pid>`` holding ``time.monotonic()`` at the
    start: CLOCK_MONOTONIC is system-wide on Linux, so the benchmark can compare
    it with its own clock."""
    data = job.data or {}
    mark = data.get("mark")
    if mark:
        path = os.path.join(mark, f"{job.id}-{os.getpid()}")
        with open(path + ".tmp", "w") as f:
            f.write(repr(time.monotonic()))
        os.replace(path + ".tmp", path)
    seconds = float(data.get("s", 1.0))
    time.sleep(seconds)
    return seconds

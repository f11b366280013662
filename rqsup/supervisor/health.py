"""Health of the supervisor: event-loop lag, and log setup.

The loop lag is how late a 50 ms timer fires: the one number that says
whether the supervisor can still renew leases and answer systemd on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable

from rqsup.supervisor.joblog import FIELDS

log = logging.getLogger("rqsup.supervisor")

LAG_TICK_S = 0.05


def set_title(text: str) -> None:
    """The process title (``ps``, ``top``); a missing setproctitle is fine."""
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(text)


class LagMonitor:
    """Samples the event-loop lag continuously; keeps the last minute."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=1200)
        self.last_tick = time.monotonic()
        #: Also told each sample (seconds): the metrics' histogram.
        self.on_sample: Callable[[float], None] | None = None

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            now = time.monotonic()
            lag = max(0.0, now - before - LAG_TICK_S)
            self.samples.append(lag)
            self.last_tick = now
            if self.on_sample is not None:
                self.on_sample(lag)

    def p99_ms(self) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def max_recent_s(self, n: int = 20) -> float:
        recent = list(self.samples)[-n:]
        stalled = time.monotonic() - self.last_tick - LAG_TICK_S
        return max([*recent, stalled, 0.0])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    """Logs go to stderr (journald under systemd, which adds its own time)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

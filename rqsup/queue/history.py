"""Reading a queue's per-minute history (BullMQ's getMetrics, with durations).

The scripts that finish jobs write it (includes/history.lua): one hash per
minute with the completed and failed counts and wait/run time buckets,
expiring after the queue's history time. A mixin of QueueCore.
"""

from __future__ import annotations

from typing import Any

from rqsup.errors import InvalidOption
from rqsup.keys import QueueKeys
from rqsup.queue.scripts import Batch, Command, Op

KINDS = {"completed": "c", "failed": "f", "wait": "w", "run": "r"}
#: Upper edges of the wait/run buckets, in seconds (the last is open).
BUCKET_EDGES_S = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0)
BUCKET_NAMES = ("<=10ms", "<=100ms", "<=1s", "<=10s", "<=1m", "<=10m", ">10m")
DEFAULT_HISTORY_S = 7 * 86_400
#: Minutes read per call at most (a week).
MAX_MINUTES = 7 * 1440


class HistoryOps:
    keys: QueueKeys

    def op_metrics(self, kind: str, start: int = 0, end: int = -1) -> Op[dict[str, Any]]:
        """Per-minute history, newest minute first as BullMQ: ``start``/``end``
        are minutes back from now (0: this minute; end -1: as far as kept, up
        to a week). ``completed``/``failed``: ``{"data": [count per minute],
        "count": their sum, "minutes": [epoch minute ...]}``; ``wait``/``run``:
        ``data`` holds a bucket -> count dict per minute (BUCKET_NAMES)."""
        if kind not in KINDS:
            raise InvalidOption(f"get_metrics kind must be one of {list(KINDS)}, got {kind!r}")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidOption(f"{name} must be an int, got {value!r}")
        if start < 0 or (end >= 0 and end < start):
            raise InvalidOption(f"get_metrics range must be 0 <= start <= end, got {start}..{end}")
        meta, (secs, _micros) = yield Batch([
            Command(("HGET", self.keys.meta, "history_s")), Command(("TIME",))])
        kept_min = int(meta or DEFAULT_HISTORY_S) // 60
        last = min(kept_min, MAX_MINUTES) - 1 if end < 0 else min(end, MAX_MINUTES - 1)
        now_min = int(secs) // 60
        minutes = [now_min - i for i in range(start, last + 1)]
        field = KINDS[kind]
        if not minutes:
            return {"data": [], "count": 0, "minutes": []}
        if field in ("c", "f"):
            raw = yield Batch([Command(("HGET", self.keys.history(m), field)) for m in minutes])
            data = [int(v or 0) for v in raw]
            return {"data": data, "count": sum(data), "minutes": minutes}
        fields = [f"{field}{i}" for i in range(len(BUCKET_NAMES))]
        raw = yield Batch([Command(("HMGET", self.keys.history(m), *fields)) for m in minutes])
        hists = [{name: int(v or 0) for name, v in zip(BUCKET_NAMES, row, strict=True)}
                 for row in raw]
        return {"data": hists, "count": sum(sum(h.values()) for h in hists),
                "minutes": minutes}

    def op_set_history(self, seconds: float) -> Op[None]:
        """Keep per-minute history this long (0: write none)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise InvalidOption(f"history must be >= 0 seconds, got {seconds!r}")
        yield Command(("HSET", self.keys.meta, "history_s", int(seconds)))

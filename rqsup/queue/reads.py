"""BullMQ's queue getters that core.py does not hold: workers, counts per
priority, a job's logs with their count, the rate limit's time to live.

A mixin of :class:`rqsup.queue.core.QueueCore`: generators of requests, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rqsup.errors import InvalidOption
from rqsup.keys import QueueKeys
from rqsup.queue import codec
from rqsup.queue import roster as roster_mod
from rqsup.queue.options import MAX_PRIORITY
from rqsup.queue.scripts import Batch, Command, Op

#: Width of one priority's band of scores in the prioritized zset
#: (includes/common.lua, priority_score): priority p is [p * BAND, (p+1) * BAND).
PRIORITY_BAND = 1 << 31


class ReadOps:
    keys: QueueKeys
    prefix: str
    name: str

    def op_workers(self) -> Op[list[dict[str, Any]]]:
        """Supervisors and standalone workers serving this queue, from their
        heartbeats (never CLIENT LIST): see rqsup.queue.roster.workers_of."""
        beats = yield from roster_mod.op_heartbeats(self.prefix)
        return roster_mod.workers_of(beats, self.name)

    def op_counts_per_priority(self, priorities: Iterable[int]) -> Op[dict[int, int]]:
        """Ready jobs of each priority (0: the wait list, as BullMQ counts it)."""
        wanted = list(priorities)
        for p in wanted:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= MAX_PRIORITY:
                raise InvalidOption(f"a priority is an int from 0 to {MAX_PRIORITY}, got {p!r}")
        if not wanted:
            return {}
        reqs = [Command(("LLEN", self.keys.wait)) if p == 0 else
                Command(("ZCOUNT", self.keys.prioritized, p * PRIORITY_BAND,
                         f"({(p + 1) * PRIORITY_BAND}"))
                for p in wanted]
        counts = yield Batch(reqs)
        return {p: int(n) for p, n in zip(wanted, counts, strict=True)}

    def op_job_logs(self, job_id: str, start: int = 0, end: int = -1,
                    asc: bool = True) -> Op[dict[str, Any]]:
        """BullMQ's getJobLogs: ``{"logs": [...], "count": total}``; ``asc``
        False lists the newest line first."""
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidOption(f"{name} must be an int, got {value!r}")
        key = self.keys.logs(job_id)
        if asc:
            rng = Command(("LRANGE", key, start, end))
        else:
            rng = Command(("LRANGE", key, -(end + 1) if end >= 0 else 0, -(start + 1)))
        lines, count = yield Batch([rng, Command(("LLEN", key))])
        logs = [codec.text(x) for x in lines]
        return {"logs": logs if asc else logs[::-1], "count": int(count)}

    def op_schedulers_count(self) -> Op[int]:
        return int((yield Command(("ZCARD", self.keys.schedulers))))

    def op_rate_limit_ttl(self) -> Op[float]:
        """Seconds until the queue's rate limit lets a claim through (0: not
        limited now), as BullMQ's getRateLimitTtl."""
        manual, used, window, meta_max = yield Batch([
            Command(("PTTL", self.keys.limiter_manual)),
            Command(("GET", self.keys.limiter)),
            Command(("PTTL", self.keys.limiter)),
            Command(("HGET", self.keys.meta, "limiter_max"))])
        ms = max(0, int(manual))
        if used is not None and meta_max is not None and int(used) >= int(meta_max):
            ms = max(ms, int(window))
        return ms / 1000

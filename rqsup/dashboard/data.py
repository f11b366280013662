"""What the dashboard shows and does, through the queue API (AsyncQueue):
queues found under the prefix, jobs per state, one job, and the actions."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aredis

from rqsup.errors import RqsupError
from rqsup.queue.aqueue import AsyncQueue
from rqsup.queue.roster import op_heartbeats, workers_of
from rqsup.queue.schedule import Schedule
from rqsup.queue.scripts import Batch, Command

#: A search reads at most this many jobs of the state per scan (newest first).
SEARCH_SCAN = 2000
#: The list of queues (a SCAN) is reused this long.
NAMES_EVERY_S = 10.0
#: A job's timeline looks through at most this many of the newest events.
TIMELINE_SCAN = 1000
STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")
#: The order of the counts in gauges.lua's reply.
GAUGE_STATES = STATES


def _num(row: Any, i: int) -> int | None:
    if isinstance(row, Exception) or row is None or row[i] is None:
        return None
    try:
        return int(row[i])
    except ValueError:
        return None


class DashboardError(Exception):
    """A request the dashboard refuses: ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Data:
    def __init__(self, client: aredis.Redis, prefix: str, mask: dict[str, list[str]]) -> None:
        self.client = client
        self.prefix = prefix
        self.mask = mask
        self._queues: dict[str, AsyncQueue] = {}
        self._names: tuple[float, list[str] | None] = (0.0, None)

    def q(self, name: str) -> AsyncQueue:
        queue = self._queues.get(name)
        if queue is None:
            try:
                queue = AsyncQueue(name, connection=self.client, prefix=self.prefix)
            except ValueError as exc:
                raise DashboardError(f"no queue {name!r}: {exc}", 404) from None
            self._queues[name] = queue
        return queue

    async def _known(self, name: str) -> AsyncQueue:
        queue = self.q(name)
        if not await self.client.exists(queue.core.keys.meta):
            raise DashboardError(f"no queue {name!r} under prefix {self.prefix!r}", 404)
        return queue

    async def names(self) -> list[str]:
        """The queues under the prefix: a SCAN of the keyspace for their meta
        hashes, reused for NAMES_EVERY_S (a SCAN costs the whole keyspace)."""
        at, found = self._names
        if found is not None and time.monotonic() - at < NAMES_EVERY_S:
            return found
        names = await self._scan_names()
        self._names = (time.monotonic(), names)
        return names

    async def _scan_names(self) -> list[str]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":{*}:meta"
        head, tail = len(self.prefix) + 2, len("}:meta")
        found = set()
        async for key in self.client.scan_iter(match=pattern, count=1000):
            text = key.decode() if isinstance(key, bytes) else str(key)
            name = text[head:-tail]
            if name and "{" not in name and "}" not in name:
                found.add(name)
        return sorted(found)

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue with its numbers, in one pipelined read for all of them
        (gauges.lua, the limits and an hour of history per queue)."""
        names = await self.names()
        if not names:
            return []
        beats = await self.q(names[0])._driver.drive(op_heartbeats(self.prefix))
        secs, _micros = await self.client.time()
        now_min = int(secs) // 60
        reqs: list[Any] = []
        for name in names:
            core = self.q(name).core
            reqs.append(core.script("gauges"))
            reqs.append(Command(("HMGET", core.keys.meta, "limiter_max", "limiter_duration_ms",
                                 "concurrency")))
            reqs += [Command(("HMGET", core.keys.history(now_min - i), "c", "f"))
                     for i in range(59, -1, -1)]
        replies = await self.q(names[0])._driver.execute_each(reqs)
        out, per = [], 62
        for i, name in enumerate(names):
            g, lim, *hist = replies[i * per:(i + 1) * per]
            if isinstance(g, Exception):
                out.append({"name": name, "error": str(g), "counts": {s: 0 for s in STATES},
                            "paused": False, "limits": {}, "consumers": 0,
                            "completed_per_minute": [], "failed_per_minute": [],
                            "oldest_waiting_s": None})
                continue
            v = [int(x) for x in g]
            out.append({
                "name": name, "counts": dict(zip(GAUGE_STATES, v[1:8], strict=True)),
                "paused": bool(v[9]), "consumers": len(workers_of(beats, name)),
                "oldest_waiting_s": (v[0] - v[8]) / 1000 if v[8] >= 0 else None,
                "limits": {"max": _num(lim, 0), "concurrency": _num(lim, 2),
                           "duration_s": (_num(lim, 1) or 0) / 1000 or None,
                           "limited_for_s": v[10] / 1000},
                "completed_per_minute": [0 if isinstance(h, Exception) else int(h[0] or 0)
                                         for h in hist],
                "failed_per_minute": [0 if isinstance(h, Exception) else int(h[1] or 0)
                                      for h in hist]})
        return out

    async def queue(self, name: str, beats: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
        queue = await self._known(name)
        if beats is None:
            beats = await queue._driver.drive(op_heartbeats(self.prefix))
        counts = await queue.counts()
        paused, limits = await queue.is_paused(), await queue.limits()
        done, failed = await self._last_hour(queue)
        return {"counts": counts, "paused": paused, "limits": limits,
                "consumers": len(workers_of(beats, name)),
                "completed_per_minute": done, "failed_per_minute": failed}

    async def _last_hour(self, queue: AsyncQueue) -> tuple[list[int], list[int]]:
        """Completed and failed per minute over the last hour, oldest first (the
        queue's history), in one round trip after the server's time."""
        secs, _micros = await self.client.time()
        now_min = int(secs) // 60
        keys = queue.core.keys
        reqs = [Command(("HMGET", keys.history(now_min - i), "c", "f")) for i in range(59, -1, -1)]
        rows = await queue._driver.execute(Batch(reqs))
        return [int(r[0] or 0) for r in rows], [int(r[1] or 0) for r in rows]

    async def supervisors(self) -> list[dict[str, Any]]:
        """Every live supervisor and standalone worker, from its heartbeat (live:
        each heartbeat is at most a renew interval old)."""
        beats = await self.q("_")._driver.drive(op_heartbeats(self.prefix))
        now = time.time()
        for b in beats:
            started = b.get("started_at")
            b["uptime_s"] = round(now - started) if isinstance(started, int | float) else None
        return beats

    async def schedulers(self) -> list[dict[str, Any]]:
        out = []
        for name in await self.names():
            for info in await self.q(name).list_schedulers():
                upcoming: list[int] = []
                if info.next_run_ms is not None:
                    try:
                        sched = Schedule.build(cron=info.cron, every=info.every_s, tz=info.tz,
                                               start=info.start_ms, end=info.end_ms)
                        run: int | None = info.next_run_ms
                        while run is not None and len(upcoming) < 3:
                            upcoming.append(run)
                            run = sched.next_run(run)
                    except (RqsupError, ValueError):
                        upcoming = [info.next_run_ms]
                out.append({"queue": name, "id": info.id, "cron": info.cron,
                            "next_runs_ms": upcoming, "every_s": info.every_s,
                            "tz": info.tz, "name": info.name,
                            "count": info.count, "limit": info.limit,
                            "next_run_ms": info.next_run_ms, "job_id": info.job_id,
                            "done": info.done, "updated_ms": info.updated_ms,
                            "last_run_ms": info.last_run_ms, "last_job_id": info.last_job_id})
        return out

    def _masked(self, queue: str, data: Any) -> Any:
        keys = self.mask.get(queue)
        if not keys or not isinstance(data, dict):
            return data
        return {k: ("***" if k in keys else v) for k, v in data.items()}

    def _row(self, queue: str, job: Any) -> dict[str, Any]:
        problems = job.problems()
        row: dict[str, Any] = {"id": job.id, "problems": problems}
        for field in ("name", "attempts_made", "timestamp_ms", "processed_on_ms",
                      "finished_on_ms", "failed_reason", "error_type", "progress"):
            try:
                row[field] = getattr(job, field)
            except (RqsupError, ValueError):
                row[field] = None
        try:
            row["data"] = self._masked(queue, job.data)
        except (RqsupError, ValueError):
            row["data"] = None
        return row

    async def jobs(self, name: str, state: str, start: int, count: int,
                   search: str | None) -> dict[str, Any]:
        if state not in STATES:
            raise DashboardError(f"no state {state!r}; known: {', '.join(STATES)}", 400)
        queue = await self._known(name)
        if search is None:
            found = await queue.get_jobs(state, start, start + count - 1)
            return {"state": state, "start": start,
                    "jobs": [self._row(name, j) for j in found]}
        # A bounded scan with a cursor: SEARCH_SCAN jobs of the state from
        # `start` (newest first); `next` is where the next scan goes on from
        # (None: the state's end). Hits are capped at `count`.
        needle = search.lower()
        scanned = await queue.get_jobs(state, start, start + SEARCH_SCAN - 1)
        hits = [j for j in scanned if needle in " ".join(
            str(x) for x in (j.id, j.raw.get("name"), j.raw.get("data"),
                             j.raw.get("failed_reason"))).lower()]
        more = len(scanned) == SEARCH_SCAN
        return {"state": state, "start": start, "search": search, "scanned": len(scanned),
                "next": start + SEARCH_SCAN if more else None,
                "jobs": [self._row(name, j) for j in hits[:count]]}

    async def job(self, name: str, job_id: str) -> dict[str, Any]:
        queue = await self._known(name)
        job = await queue.get_job(job_id)
        if job is None:
            raise DashboardError(f"no job {job_id!r} in queue {name!r}", 404)
        row = self._row(name, job)
        row.update(state=await queue.get_job_state(job_id), stacktrace=job.stacktrace,
                   lease=job.lease, logs=await queue.get_job_logs(job_id, 0, 199))
        try:
            row["return_value"] = job.return_value
            row["options"] = job.raw.get("opts")
        except (RqsupError, ValueError):
            row["return_value"] = None
        row["flow"] = await queue.get_flow(job_id, depth=3, max_children=100) \
            if job.raw.get("has_children") else None
        row["timeline"] = await self.timeline(queue, job_id)
        return row

    async def timeline(self, queue: AsyncQueue, job_id: str) -> list[dict[str, Any]]:
        """The job's events still in the stream (capped), oldest first."""
        from rqsup.queue.events import parse_entries

        entries: Any = await self.client.xrevrange(queue.core.keys.events, count=TIMELINE_SCAN)
        out = []
        for ev in reversed(parse_entries(list(entries or []), decode=True)):
            if ev.job_id == job_id:
                ms = int(ev.stream_id.partition("-")[0])
                out.append({"at_ms": ms, "event": ev.name,
                            "fields": {k: v for k, v in ev.fields.items()
                                       if k not in ("returnvalue", "stacktrace")}})
        return out[-50:]

    async def act(self, name: str, action: str, job_id: str | None,
                  form: dict[str, str] | None = None) -> Any:
        queue = await self._known(name)
        form = form or {}
        try:
            if action == "clean":
                state = form.get("state", "completed")
                grace = float(form.get("grace_s", "3600"))
                return len(await queue.clean(grace, 10_000, state))
            if job_id is not None:
                job = await queue.get_job(job_id)
                if job is None:
                    raise DashboardError(f"no job {job_id!r} in queue {name!r}", 404)
                if action == "retry":
                    state = await job.state()
                    await job.retry(state if state == "completed" else "failed",
                                    reset_attempts_made=True)
                elif action == "remove":
                    await job.remove()
                elif action == "promote":
                    await job.promote()
                elif action == "cancel":
                    return await queue.cancel(job_id, "cancelled from the dashboard")
                elif action == "priority":
                    await job.change_priority(int(form.get("priority", "0")))
                elif action == "delay":
                    await job.change_delay(float(form.get("delay_s", "0")))
                return "done"
            if action == "pause":
                await queue.pause()
            elif action == "resume":
                await queue.resume()
            elif action == "drain":
                return await queue.drain()
            elif action == "retry-failed":
                return await queue.retry_jobs("failed", reset_attempts_made=True)
            elif action == "promote-delayed":
                return await queue.promote_jobs()
            elif action == "obliterate":
                await queue.obliterate(force=False)
            return "done"
        except ValueError as exc:  # a bad number in the form, a bad option
            raise DashboardError(str(exc), 400) from None
        except RqsupError as exc:
            raise DashboardError(str(exc), 409) from None

"""What the dashboard shows and does, through the queue API (AsyncQueue):
queues found under the prefix, jobs per state, one job, and the actions."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aredis

from rqsup.errors import RqsupError
from rqsup.queue.aqueue import AsyncQueue
from rqsup.queue.roster import op_heartbeats, workers_of

#: A search reads at most this many jobs of the state per scan (newest first).
SEARCH_SCAN = 2000
#: A job's timeline looks through at most this many of the newest events.
TIMELINE_SCAN = 5000
STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")


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
        names = await self.names()
        beats = await self.q(names[0])._driver.drive(op_heartbeats(self.prefix)) if names else []
        out = []
        for name in names:
            out.append({**await self.queue(name, beats), "name": name})
        return out

    async def queue(self, name: str, beats: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
        queue = await self._known(name)
        if beats is None:
            beats = await queue._driver.drive(op_heartbeats(self.prefix))
        counts = await queue.counts()
        done = await queue.get_metrics("completed", 0, 59)
        failed = await queue.get_metrics("failed", 0, 59)
        return {"counts": counts, "paused": await queue.is_paused(),
                "limits": await queue.limits(), "consumers": len(workers_of(beats, name)),
                "completed_per_minute": done["data"][::-1],
                "failed_per_minute": failed["data"][::-1]}

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
                out.append({"queue": name, "id": info.id, "cron": info.cron,
                            "every_s": info.every_s, "tz": info.tz, "name": info.name,
                            "count": info.count, "limit": info.limit,
                            "next_run_ms": info.next_run_ms, "job_id": info.job_id,
                            "done": info.done, "updated_ms": info.updated_ms})
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

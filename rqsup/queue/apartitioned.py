"""The asyncio partitioned queue: :class:`AsyncQueue` with ``partitions=N``
(the routing and its rules: rqsup.queue.partitioned)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rqsup.queue.partitioned import Router, auto_ids, group_bulk, slot_of, split

if TYPE_CHECKING:
    from rqsup.queue.ajob import AsyncJob
    from rqsup.queue.aqueue import AsyncQueue


class AsyncPartitionedQueue(Router):
    def __init__(self, parts: list[AsyncQueue]) -> None:
        super().__init__(len(parts))
        self.parts = parts
        self.name = parts[0].name.rpartition("#")[0]

    def __repr__(self) -> str:
        return f"AsyncQueue({self.name!r}, partitions={len(self.parts)})"

    async def close(self) -> None:
        for p in self.parts:
            await p.close()

    async def __aenter__(self) -> AsyncPartitionedQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _owner(self, job_id: str) -> AsyncQueue | None:
        i = self._named(job_id)
        if i is not None:
            return self.parts[i]
        first = self.parts[slot_of(job_id, len(self.parts))]
        if await first.get_job(job_id) is not None:
            return first
        for p in self.parts:
            if p is not first and await p.get_job(job_id) is not None:
                return p
        return None

    async def _owner_or_first(self, job_id: str) -> AsyncQueue:
        return await self._owner(job_id) or self.parts[slot_of(job_id, len(self.parts))]

    async def add(self, name: str, data: Any = None, **options: Any) -> AsyncJob:
        i = self._pick(options)
        part = self.parts[i]
        if options.get("parent") is not None:
            return await part.add(name, data, **options)
        [spec] = auto_ids([part.core.spec(name, data, options)], i)
        [added] = await part._driver.drive(part.core.op_add_jobs([spec]))
        return part._job_from_added(added)

    async def add_bulk(self, jobs: Iterable[Any]) -> list[AsyncJob]:
        items = list(jobs)
        out: list[AsyncJob | None] = [None] * len(items)
        for i, group in group_bulk(items, self._pick).items():
            part = self.parts[i]
            specs = auto_ids(part.core.specs_from_bulk([it for _p, it in group]), i)
            added = await part._driver.drive(part.core.op_add_jobs(specs))
            for (pos, _it), a in zip(group, added, strict=True):
                out[pos] = part._job_from_added(a)
        return [j for j in out if j is not None]

    async def call(self, name: str, data: Any = None, timeout: float | None = 30.0,
                   **options: Any) -> Any:
        if "job_timeout" in options:
            options["timeout"] = options.pop("job_timeout")
        job = await self.add(name, data, **options)
        return await job.queue.wait_for(job.id, timeout, job.added_event or None)

    async def wait_for(self, job_id: str, timeout: float | None = None) -> Any:
        return await (await self._owner_or_first(job_id)).wait_for(job_id, timeout)

    async def get_job(self, job_id: str) -> AsyncJob | None:
        part = await self._owner(job_id)
        return None if part is None else await part.get_job(job_id)

    async def get_job_state(self, job_id: str) -> str:
        part = await self._owner(job_id)
        return "unknown" if part is None else await part.get_job_state(job_id)

    async def get_jobs(self, state: str | Iterable[str], start: int = 0, end: int = -1,
                       asc: bool = False) -> list[AsyncJob]:
        jobs = [j for p in self.parts for j in await p.get_jobs(state, 0, end, asc)]
        jobs.sort(key=lambda j: (j.timestamp_ms or 0), reverse=not asc)
        return jobs[start:] if end < 0 else jobs[start:end + 1]

    async def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.parts:
            for state, n in (await p.counts()).items():
                total[state] = total.get(state, 0) + n
        return total

    async def get_job_counts(self, *states: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.parts:
            for state, n in (await p.get_job_counts(*states)).items():
                total[state] = total.get(state, 0) + n
        return total

    async def clean(self, grace: float, limit: int = 1000,
                    state: str = "completed") -> list[str]:
        out: list[str] = []
        for p in self.parts:
            if len(out) < limit:
                out += await p.clean(grace, limit - len(out), state)
        return out

    async def retry_jobs(self, state: str = "failed", count: int | None = None) -> int:
        return sum([await p.retry_jobs(state, count) for p in self.parts])

    async def promote_jobs(self, count: int | None = None) -> int:
        return sum([await p.promote_jobs(count) for p in self.parts])

    async def is_paused(self) -> bool:
        return all([await p.is_paused() for p in self.parts])

    async def cancel(self, job_id: str, reason: str | None = None) -> str:
        return await (await self._owner_or_first(job_id)).cancel(job_id, reason)

    async def remove(self, job_id: str) -> None:
        await (await self._owner_or_first(job_id)).remove(job_id)

    async def pause(self) -> None:
        for p in self.parts:
            await p.pause()

    async def resume(self) -> None:
        for p in self.parts:
            await p.resume()

    async def drain(self, delayed: bool = False) -> int:
        return sum([await p.drain(delayed) for p in self.parts])

    async def obliterate(self, force: bool = False) -> None:
        for p in self.parts:
            await p.obliterate(force)

    async def set_global_concurrency(self, limit: int | None) -> list[dict[str, Any]]:
        if limit is None:
            return [await p.set_global_concurrency(None) for p in self.parts]
        self._check_budget("global_concurrency", limit)
        return [await p.set_global_concurrency(n)
                for p, n in zip(self.parts, split(limit, len(self.parts)), strict=True)]

    async def set_rate_limit(self, max_jobs: int, duration: float) -> list[dict[str, Any]]:
        self._check_budget("rate limit max", max_jobs)
        return [await p.set_rate_limit(n, duration)
                for p, n in zip(self.parts, split(max_jobs, len(self.parts)), strict=True)]

    def __getattr__(self, attr: str) -> Any:
        if attr in ("parts", "name"):
            raise AttributeError(attr)
        raise self._unsupported(self.name, attr, hasattr(self.parts[0], attr))

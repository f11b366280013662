"""The asyncio producer API: :class:`AsyncQueue` (its jobs: rqsup.queue.ajob).

Same operations as :class:`rqsup.Queue` (see its docstrings), awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import redis.asyncio as aredis

from rqsup.errors import InvalidOption, JobNotFound
from rqsup.queue import codec, tracehook
from rqsup.queue import schedulers as sched
from rqsup.queue.ajob import AsyncJob
from rqsup.queue.connection import async_client
from rqsup.queue.core import Added, QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.flows import FlowCore
from rqsup.queue.options import epoch_ms
from rqsup.queue.schedule import Schedule
from rqsup.queue.waiters import (
    CHECK_INTERVAL_S,
    AsyncEventReader,
    Outcome,
    outcome_from_record,
    resolve,
)


class AsyncQueue:
    """A queue, for asyncio code. See :class:`rqsup.Queue`."""

    def __new__(cls, name: str, url: str | None = None, *, partitions: int = 1,
                **kwargs: Any) -> AsyncQueue:
        """``partitions=N`` (N > 1) gives an AsyncPartitionedQueue over queues
        ``<name>#0`` .. ``<name>#N-1`` (rqsup.queue.apartitioned)."""
        from rqsup.queue.apartitioned import AsyncPartitionedQueue
        from rqsup.queue.partitioned import check_partitions, make_parts

        if check_partitions(partitions) == 1:
            return super().__new__(cls)
        client = kwargs.pop("connection", None)
        own = client is None
        client = client if client is not None else async_client(url)
        parts = make_parts(AsyncQueue, name, partitions, client, own, kwargs)
        return cast(AsyncQueue, AsyncPartitionedQueue(parts))

    def __init__(
        self,
        name: str,
        url: str | None = None,
        *,
        connection: aredis.Redis | None = None,
        prefix: str = "rqsup",
        default_job_options: Mapping[str, Any] | None = None,
        max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES,
        wait_replicas: int = 0,
        partitions: int = 1,
    ) -> None:
        self.core = QueueCore(name, prefix, default_job_options, max_data_bytes)
        self.client = connection if connection is not None else async_client(url)
        self._own_client = connection is None
        self._driver = AsyncDriver(self.client, wait_replicas)

    @property
    def name(self) -> str:
        return self.core.name

    def __repr__(self) -> str:
        return f"AsyncQueue({self.core.name!r}, prefix={self.core.prefix!r})"

    async def close(self) -> None:
        self._driver.close(repr(self))
        AsyncEventReader.stop_for(self.client)
        if self._own_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add(self, name: str, data: Any = None, **options: Any) -> AsyncJob:
        if options.get("parent") is not None:
            return await self._add_to_parent(name, data, options)
        spec = self.core.spec(name, data, options)
        tracing = tracehook.tracing()
        if tracing is not None:
            with tracing.producing(self.core.name, name) as tp:
                spec.traced(tp)
                [added] = await self._driver.drive(self.core.op_add_jobs([spec]))
        else:
            [added] = await self._driver.drive(self.core.op_add_jobs([spec]))
        return self._job_from_added(added)

    async def _add_to_parent(self, name: str, data: Any, options: dict[str, Any]) -> AsyncJob:
        parent = options.pop("parent")
        node = {"name": name, "queue": self.core.name, "data": data, "opts": options}
        flows = FlowCore(self.core.prefix, max_data_bytes=self.core.max_data_bytes)
        job_id, created = await self._driver.drive(flows.op_add_to_parent(parent, node))
        rec = await self._driver.drive(self.core.op_require_record(job_id))
        job = AsyncJob(rec.id, rec.raw, self)
        job.add_outcome = "created" if created else "duplicated"
        return job

    async def add_bulk(self, jobs: Iterable[Any]) -> list[AsyncJob]:
        specs = self.core.specs_from_bulk(jobs)
        tracing = tracehook.tracing()
        if tracing is not None and specs:
            with tracing.producing(self.core.name, specs[0].name, len(specs)) as tp:
                for spec in specs:
                    spec.traced(tp)
                added = await self._driver.drive(self.core.op_add_jobs(specs))
        else:
            added = await self._driver.drive(self.core.op_add_jobs(specs))
        return [self._job_from_added(a) for a in added]

    def _job_from_added(self, added: Added) -> AsyncJob:
        job = AsyncJob(added.id, added.fields, self, added.event_id)
        job.add_outcome = added.outcome
        return job

    async def call(
        self, name: str, data: Any = None, timeout: float | None = 30.0, **options: Any
    ) -> Any:
        if "job_timeout" in options:  # `timeout` here is how long to wait
            options["timeout"] = options.pop("job_timeout")
        job = await self.add(name, data, **options)
        return await self.wait_for(job.id, timeout, job.added_event or None)

    async def wait_for(
        self, job_id: str, timeout: float | None = None, after_id: str | None = None
    ) -> Any:
        self._driver._refuse_if_closed()
        reader = await AsyncEventReader.for_queue(self.client, self.core.keys.events, after_id)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def slot(outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        early = reader.book.register(job_id, slot, after_id)
        if early is not None:
            return resolve(job_id, early)
        try:
            if after_id is None:
                rec = await self._driver.drive(self.core.op_finished(job_id))
                if rec is not None:
                    return resolve(job_id, outcome_from_record(rec))
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                step = CHECK_INTERVAL_S
                if deadline is not None:
                    step = min(step, deadline - loop.time())
                    if step <= 0:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
                done, _ = await asyncio.wait([fut], timeout=step)
                if done:
                    return resolve(job_id, fut.result())
                rec = await self._driver.drive(self.core.op_finished(job_id))
                if rec is not None:
                    return resolve(job_id, outcome_from_record(rec))
        finally:
            reader.book.unregister(job_id, slot)

    async def get_job(self, job_id: str) -> AsyncJob | None:
        rec = await self._driver.drive(self.core.op_get_record(job_id))
        return None if rec is None else AsyncJob(rec.id, rec.raw, self, broken=rec.broken)

    async def get_jobs(self, state: str | Iterable[str], start: int = 0, end: int = -1,
                       asc: bool = False) -> list[AsyncJob]:
        recs = await self._driver.drive(self.core.op_get_records(state, start, end, asc))
        return [AsyncJob(r.id, r.raw, self, broken=r.broken) for r in recs]

    async def trim_events(self, max_len: int) -> int:
        """Keep only the ``max_len`` newest events; how many were removed."""
        return await self._driver.drive(self.core.op_trim_events(max_len))

    async def publish_event(self, name: str, fields: Mapping[str, Any] | None = None) -> str:
        """Add a custom event ``name`` to the stream (QueueEvents sees it);
        non-text values are stored as JSON. Returns its stream id."""
        return await self._driver.drive(self.core.op_publish_event(name, fields))

    async def get_workers(self) -> list[dict[str, Any]]:
        return await self._driver.drive(self.core.op_workers())

    async def get_workers_count(self) -> int:
        return len(await self.get_workers())

    async def get_counts_per_priority(self, priorities: Iterable[int]) -> dict[int, int]:
        return await self._driver.drive(self.core.op_counts_per_priority(priorities))

    async def get_job_logs(self, job_id: str, start: int = 0, end: int = -1,
                     asc: bool = True) -> dict[str, Any]:
        return await self._driver.drive(self.core.op_job_logs(job_id, start, end, asc))

    async def get_rate_limit_ttl(self) -> float:
        return await self._driver.drive(self.core.op_rate_limit_ttl())

    async def get_schedulers_count(self) -> int:
        return await self._driver.drive(self.core.op_schedulers_count())

    async def cancel(self, job_id: str, reason: str | None = None) -> str:
        return await self._driver.drive(self.core.op_cancel(job_id, reason))

    async def get_job_state(self, job_id: str) -> str:
        try:
            return await self._driver.drive(self.core.op_state(job_id))
        except JobNotFound:
            return "unknown"

    async def get_job_counts(self, *states: str) -> dict[str, int]:
        counts = await self._driver.drive(self.core.op_counts())
        unknown = set(states) - set(counts)
        if unknown:
            raise InvalidOption(f"unknown states {sorted(unknown)}; known: {', '.join(counts)}")
        return {s: counts[s] for s in states} if states else counts

    async def remove(self, job_id: str) -> None:
        await self._driver.drive(self.core.op_remove(job_id))

    async def get_metrics(self, kind: str, start: int = 0, end: int = -1) -> dict[str, Any]:
        return await self._driver.drive(self.core.op_metrics(kind, start, end))

    async def set_history(self, seconds: float) -> None:
        await self._driver.drive(self.core.op_set_history(seconds))

    async def counts(self) -> dict[str, int]:
        return await self._driver.drive(self.core.op_counts())

    async def malformed(self, start: int = 0, end: int = -1) -> list[tuple[str, str, int]]:
        """See :meth:`rqsup.Queue.malformed`."""
        return await self._driver.drive(self.core.op_malformed(start, end))

    async def count_malformed(self) -> int:
        return await self._driver.drive(self.core.op_count_malformed())

    async def get_dedup_job_id(self, dedup_id: str) -> str | None:
        return await self._driver.drive(self.core.op_get_dedup_job_id(dedup_id))

    async def remove_dedup_key(self, dedup_id: str) -> bool:
        return await self._driver.drive(self.core.op_remove_dedup_key(dedup_id))

    async def is_paused(self) -> bool:
        return await self._driver.drive(self.core.op_is_paused())

    async def get_flow(self, job_id: str, depth: int = 10,
                       max_children: int = 1000) -> dict[str, Any] | None:
        op = FlowCore(self.core.prefix).op_get_flow(self.core.name, job_id, depth, max_children)
        return await self._driver.drive(op)

    # -- queue-wide limits (enforced in every claim, across supervisors) ------

    async def set_rate_limit(self, max_jobs: int, duration: float) -> dict[str, Any]:
        """At most ``max_jobs`` claims per ``duration`` seconds, queue-wide."""
        return await self._driver.drive(self.core.op_limits(max_jobs=max_jobs, duration_s=duration))

    async def remove_rate_limit(self) -> dict[str, Any]:
        return await self._driver.drive(self.core.op_limits(clear_rate=True))

    async def set_global_concurrency(self, limit: int | None) -> dict[str, Any]:
        """At most ``limit`` active jobs across every worker (None: no cap)."""
        op = (self.core.op_limits(clear_concurrency=True) if limit is None
              else self.core.op_limits(concurrency=limit))
        return await self._driver.drive(op)

    async def get_global_concurrency(self) -> int | None:
        cap = (await self.limits())["concurrency"]
        return None if cap is None else int(cap)

    async def remove_global_concurrency(self) -> dict[str, Any]:
        return await self.set_global_concurrency(None)

    async def rate_limit(self, delay: float) -> dict[str, Any]:
        """Claim nothing for ``delay`` seconds (after an upstream 429, say); 0 lifts it."""
        return await self._driver.drive(self.core.op_limits(manual_s=delay))

    async def limits(self) -> dict[str, Any]:
        """``{max, duration_s, concurrency, limited_for_s}`` (None: not set)."""
        return await self._driver.drive(self.core.op_limits())

    async def pause(self) -> None:
        await self._driver.drive(self.core.op_pause(True))

    async def resume(self) -> None:
        await self._driver.drive(self.core.op_pause(False))

    async def drain(self, delayed: bool = False) -> int:
        return await self._driver.drive(self.core.op_drain(delayed))

    async def clean(self, grace: float, limit: int = 1000, state: str = "completed") -> list[str]:
        return await self._driver.drive(self.core.op_clean(round(grace * 1000), limit, state))

    async def obliterate(self, force: bool = False) -> None:
        await self._driver.drive(self.core.op_obliterate(force))

    async def retry_jobs(self, state: str = "failed", count: int | None = None,
                   timestamp: float | datetime | None = None,
                   reset_attempts_made: bool = False) -> int:
        """Move finished jobs of ``state`` back to wait, oldest first, at most
        ``count``, only those finished at or before ``timestamp`` (epoch
        seconds or a datetime) when given; how many. As BullMQ's retryJobs,
        attempts_made is kept unless ``reset_attempts_made``."""
        return await self._driver.drive(self.core.op_retry_jobs(
            state, count, epoch_ms(timestamp), reset_attempts_made))

    async def promote_jobs(self, count: int | None = None) -> int:
        return await self._driver.drive(self.core.op_promote_jobs(count))

    async def set_max_events(self, max_events: int) -> None:
        await self._driver.drive(self.core.op_set_max_events(max_events))

    # -- schedulers (repeatable jobs) -------------------------------------------

    async def upsert_scheduler(
        self,
        scheduler_id: str,
        *,
        cron: str | None = None,
        every: Any = None,
        tz: str | None = None,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        template: Mapping[str, Any] | None = None,
        immediately: bool = False,
        count: int | None = None,
    ) -> sched.SchedulerInfo:
        schedule = Schedule.build(cron=cron, every=every, tz=tz, start=start, end=end,
                                  limit=limit, immediately=immediately)
        op = sched.op_upsert(self.core, scheduler_id, schedule, template, count)
        return await self._driver.drive(op)

    async def get_scheduler(self, scheduler_id: str) -> sched.SchedulerInfo | None:
        return await self._driver.drive(sched.op_get(self.core, scheduler_id))

    async def list_schedulers(self, start: int = 0, end: int = -1) -> list[sched.SchedulerInfo]:
        return await self._driver.drive(sched.op_list(self.core, start, end))

    async def remove_scheduler(self, scheduler_id: str) -> bool:
        return await self._driver.drive(sched.op_remove(self.core, scheduler_id))

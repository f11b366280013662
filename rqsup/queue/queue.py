"""The sync producer API: :class:`Queue` (its jobs: rqsup.queue.job)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import redis

from rqsup.errors import InvalidOption, JobNotFound
from rqsup.queue import calls, codec, fastadd, fastbulk, tracehook
from rqsup.queue import schedulers as sched
from rqsup.queue.connection import sync_client
from rqsup.queue.core import Added, QueueCore
from rqsup.queue.drivers import SyncDriver
from rqsup.queue.flows import FlowCore
from rqsup.queue.job import Job
from rqsup.queue.options import epoch_ms
from rqsup.queue.schedule import Schedule
from rqsup.queue.waiters import (
    CHECK_INTERVAL_S,
    Outcome,
    SyncEventReader,
    outcome_from_record,
    resolve,
)


class Queue:
    """A queue, for sync code: add jobs, inspect and administer them.

    ``Queue("emails", "redis://host:6379/0")`` or ``Queue("emails",
    connection=existing_client)``. ``default_job_options`` apply to every
    ``add`` unless overridden there.
    """

    def __new__(cls, name: str, url: str | None = None, *, partitions: int = 1,
                **kwargs: Any) -> Queue:
        """``partitions=N`` (N > 1) gives a :class:`PartitionedQueue` over
        queues ``<name>#0`` .. ``<name>#N-1`` (rqsup.queue.partitioned)."""
        from rqsup.queue.partitioned import PartitionedQueue, check_partitions, make_parts

        if check_partitions(partitions) == 1:
            return super().__new__(cls)
        client = kwargs.pop("connection", None)
        own = client is None
        client = client if client is not None else sync_client(url)
        parts = make_parts(Queue, name, partitions, client, own, kwargs)
        return cast(Queue, PartitionedQueue(parts))

    def __init__(
        self,
        name: str,
        url: str | None = None,
        *,
        connection: redis.Redis | None = None,
        prefix: str = "rqsup",
        default_job_options: Mapping[str, Any] | None = None,
        max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES,
        wait_replicas: int = 0,
        partitions: int = 1,
    ) -> None:
        self.core = QueueCore(name, prefix, default_job_options, max_data_bytes)
        self.client = connection if connection is not None else sync_client(url)
        self._own_client = connection is None
        self._driver = SyncDriver(self.client, wait_replicas)
        self._fast: fastadd.FastAdd | None = None

    @property
    def name(self) -> str:
        return self.core.name

    def __repr__(self) -> str:
        return f"Queue({self.core.name!r}, prefix={self.core.prefix!r})"

    def close(self) -> None:
        """Release the connection (when the queue made it); using the queue
        afterwards raises ClosedError."""
        self._driver.close(repr(self))
        SyncEventReader.stop_for(self.client)
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producing ------------------------------------------------------------

    def add(self, name: str, data: Any = None, **options: Any) -> Job:
        """Add one job. Options: job_id, delay, priority, lifo, attempts, backoff,
        timeout, remove_on_complete, remove_on_fail, keep_logs, dedup (see
        docs/decisions.md). A deduplicated add returns the kept job
        (``job.deduplicated``)."""
        if fastadd.usable(self, options):
            if self._fast is None:
                self._fast = fastadd.FastAdd(self)
            added = self._fast.add(self, name, data)
            if added is not None:
                return self._job_from_added(added)
        if options.get("parent") is not None:
            return self._add_to_parent(name, data, options)
        spec = self.core.spec(name, data, options)
        tracing = tracehook.tracing()
        if tracing is not None:
            with tracing.producing(self.core.name, name) as tp:
                spec.traced(tp)
                [added] = self._driver.drive(self.core.op_add_jobs([spec]))
        else:
            [added] = self._driver.drive(self.core.op_add_jobs([spec]))
        return self._job_from_added(added)

    def _add_to_parent(self, name: str, data: Any, options: dict[str, Any]) -> Job:
        """``parent={"id", "queue"}``: the job becomes a child of that job."""
        parent = options.pop("parent")
        node = {"name": name, "queue": self.core.name, "data": data, "opts": options}
        flows = FlowCore(self.core.prefix, max_data_bytes=self.core.max_data_bytes)
        job_id, created = self._driver.drive(flows.op_add_to_parent(parent, node))
        rec = self._driver.drive(self.core.op_require_record(job_id))
        job = Job(rec.id, rec.raw, self)
        job.add_outcome = "created" if created else "duplicated"
        return job

    def add_bulk(self, jobs: Iterable[Any]) -> list[Job]:
        """Add many jobs in few round trips: ``[{"name", "data", "opts"}]`` or tuples."""
        specs = self.core.specs_from_bulk(jobs)
        if fastbulk.usable(self, len(specs)):
            return [self._job_from_added(a) for a in fastbulk.add_bulk(self, specs)]
        tracing = tracehook.tracing()
        if tracing is not None and specs:
            with tracing.producing(self.core.name, specs[0].name, len(specs)) as tp:
                for spec in specs:
                    spec.traced(tp)
                added = self._driver.drive(self.core.op_add_jobs(specs))
        else:
            added = self._driver.drive(self.core.op_add_jobs(specs))
        return [self._job_from_added(a) for a in added]

    def _job_from_added(self, added: Added) -> Job:
        job = Job(added.id, added.fields, self, added.event_id)
        job.add_outcome = added.outcome
        return job

    def call(
        self, name: str, data: Any = None, timeout: float | None = 30.0, **options: Any
    ) -> Any:
        """Add a job and return its result (request/response).

        ``timeout`` is how long to wait (TimeoutError); the job's own run-time
        limit is ``job_timeout``. A failed job raises JobFailed.
        """
        if "job_timeout" in options:  # `timeout` here is how long to wait
            options["timeout"] = options.pop("job_timeout")
        return calls.call(self, name, data, timeout, options)

    def _add_for_call(self, name: str, data: Any, options: dict[str, Any],
                      reply_to: str) -> Job:
        """The ordinary add of a call: its job carries the reply list."""
        spec = self.core.spec(name, data, options)
        tracing = tracehook.tracing()
        if tracing is not None:
            with tracing.producing(self.core.name, name) as tp:
                spec.traced(tp)
                [added] = self._driver.drive(self.core.op_add_jobs([spec], reply_to))
        else:
            [added] = self._driver.drive(self.core.op_add_jobs([spec], reply_to))
        return self._job_from_added(added)

    def wait_for(
        self, job_id: str, timeout: float | None = None, after_id: str | None = None
    ) -> Any:
        """Block until the job finishes; its return value, or JobFailed / TimeoutError."""
        self._driver._refuse_if_closed()
        reader = SyncEventReader.for_queue(self.client, self.core.keys.events, after_id)
        done = threading.Event()
        box: list[Outcome] = []

        def slot(outcome: Outcome) -> None:
            box.append(outcome)
            done.set()

        early = reader.book.register(job_id, slot, after_id)
        if early is not None:
            return resolve(job_id, early)
        try:
            if after_id is None:
                rec = self._driver.drive(self.core.op_finished(job_id))
                if rec is not None:
                    return resolve(job_id, outcome_from_record(rec))
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                step = CHECK_INTERVAL_S
                if deadline is not None:
                    step = min(step, deadline - time.monotonic())
                    if step <= 0:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
                if done.wait(step):
                    return resolve(job_id, box[0])
                rec = self._driver.drive(self.core.op_finished(job_id))
                if rec is not None:
                    return resolve(job_id, outcome_from_record(rec))
        finally:
            reader.book.unregister(job_id, slot)

    # -- reading --------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        rec = self._driver.drive(self.core.op_get_record(job_id))
        return None if rec is None else Job(rec.id, rec.raw, self, broken=rec.broken)

    def get_jobs(self, state: str | Iterable[str], start: int = 0, end: int = -1,
                 asc: bool = False) -> list[Job]:
        """Jobs of a state (or of several, one after the other), positions
        ``start`` to ``end`` (inclusive; -1: the last), newest first as in
        BullMQ, oldest first (for wait: the next to run first) with ``asc``."""
        recs = self._driver.drive(self.core.op_get_records(state, start, end, asc))
        return [Job(r.id, r.raw, self, broken=r.broken) for r in recs]

    def trim_events(self, max_len: int) -> int:
        """Keep only the ``max_len`` newest events; how many were removed."""
        return self._driver.drive(self.core.op_trim_events(max_len))

    def publish_event(self, name: str, fields: Mapping[str, Any] | None = None) -> str:
        """Add a custom event ``name`` to the stream (QueueEvents sees it);
        non-text values are stored as JSON. Returns its stream id."""
        return self._driver.drive(self.core.op_publish_event(name, fields))

    def get_workers(self) -> list[dict[str, Any]]:
        """Supervisors and standalone Workers serving this queue, from their
        heartbeats (never CLIENT LIST): name, kind, host, pid, version,
        started_at, heartbeat_at, mode, concurrency, running and jobs (the
        ids it runs)."""
        return self._driver.drive(self.core.op_workers())

    def get_workers_count(self) -> int:
        return len(self.get_workers())

    def get_counts_per_priority(self, priorities: Iterable[int]) -> dict[int, int]:
        """Ready jobs per priority (0: the plain wait list)."""
        return self._driver.drive(self.core.op_counts_per_priority(priorities))

    def get_job_logs(self, job_id: str, start: int = 0, end: int = -1,
                     asc: bool = True) -> dict[str, Any]:
        """A job's log lines start..end and how many it has: ``{logs, count}``."""
        return self._driver.drive(self.core.op_job_logs(job_id, start, end, asc))

    def get_rate_limit_ttl(self) -> float:
        """Seconds until the rate limit lets a claim through (0: not limited)."""
        return self._driver.drive(self.core.op_rate_limit_ttl())

    def get_schedulers_count(self) -> int:
        return self._driver.drive(self.core.op_schedulers_count())

    def cancel(self, job_id: str, reason: str | None = None) -> str:
        """Cancel a job from anywhere: a running one is stopped by its worker
        and fails with JobCancelled and ``reason`` ("signalled"); one not
        running fails at once ("failed"). Not retried either way."""
        return self._driver.drive(self.core.op_cancel(job_id, reason))

    def get_job_state(self, job_id: str) -> str:
        """The job's state (wait, active, ...), or "unknown" for no such job,
        as BullMQ's getJobState (``job.state()`` raises JobNotFound instead)."""
        try:
            return self._driver.drive(self.core.op_state(job_id))
        except JobNotFound:
            return "unknown"

    def get_job_counts(self, *states: str) -> dict[str, int]:
        """Counts of the states named (all when none is), as BullMQ's getJobCounts."""
        counts = self._driver.drive(self.core.op_counts())
        unknown = set(states) - set(counts)
        if unknown:
            raise InvalidOption(f"unknown states {sorted(unknown)}; known: {', '.join(counts)}")
        return {s: counts[s] for s in states} if states else counts

    def remove(self, job_id: str) -> None:
        """Remove a job that is not running (and its pending children)."""
        self._driver.drive(self.core.op_remove(job_id))

    def get_metrics(self, kind: str, start: int = 0, end: int = -1) -> dict[str, Any]:
        """Per-minute history (BullMQ's getMetrics): kind completed, failed,
        wait or run; minutes back from now, newest first (rqsup.queue.history)."""
        return self._driver.drive(self.core.op_metrics(kind, start, end))

    def set_history(self, seconds: float) -> None:
        """Keep per-minute history this long (default 7 days; 0: off)."""
        self._driver.drive(self.core.op_set_history(seconds))

    def counts(self) -> dict[str, int]:
        return self._driver.drive(self.core.op_counts())

    def malformed(self, start: int = 0, end: int = -1) -> list[tuple[str, str, int]]:
        """Ids set aside because their key is no job hash (damaged, or an id
        whose hash is gone): ``(id, why, when in ms)``, oldest first."""
        return self._driver.drive(self.core.op_malformed(start, end))

    def count_malformed(self) -> int:
        return self._driver.drive(self.core.op_count_malformed())

    def get_dedup_job_id(self, dedup_id: str) -> str | None:
        """The id of the job holding this deduplication id, or None."""
        return self._driver.drive(self.core.op_get_dedup_job_id(dedup_id))

    def remove_dedup_key(self, dedup_id: str) -> bool:
        """Forget a deduplication id now (the next add with it creates a job);
        the job that held it is left alone. False when there was no key."""
        return self._driver.drive(self.core.op_remove_dedup_key(dedup_id))

    def is_paused(self) -> bool:
        return self._driver.drive(self.core.op_is_paused())

    def get_flow(self, job_id: str, depth: int = 10,
                 max_children: int = 1000) -> dict[str, Any] | None:
        """A flow job and its children with their states (nested dicts), or None."""
        op = FlowCore(self.core.prefix).op_get_flow(self.core.name, job_id, depth, max_children)
        return self._driver.drive(op)

    # -- administration -------------------------------------------------------

    # -- queue-wide limits (enforced in every claim, across supervisors) ------

    def set_rate_limit(self, max_jobs: int, duration: float) -> dict[str, Any]:
        """At most ``max_jobs`` claims per ``duration`` seconds, queue-wide."""
        return self._driver.drive(self.core.op_limits(max_jobs=max_jobs, duration_s=duration))

    def remove_rate_limit(self) -> dict[str, Any]:
        return self._driver.drive(self.core.op_limits(clear_rate=True))

    def set_global_concurrency(self, limit: int | None) -> dict[str, Any]:
        """At most ``limit`` active jobs across every worker (None: no cap)."""
        op = (self.core.op_limits(clear_concurrency=True) if limit is None
              else self.core.op_limits(concurrency=limit))
        return self._driver.drive(op)

    def get_global_concurrency(self) -> int | None:
        cap = (self.limits())["concurrency"]
        return None if cap is None else int(cap)

    def remove_global_concurrency(self) -> dict[str, Any]:
        return self.set_global_concurrency(None)

    def rate_limit(self, delay: float) -> dict[str, Any]:
        """Claim nothing for ``delay`` seconds (after an upstream 429, say); 0 lifts it."""
        return self._driver.drive(self.core.op_limits(manual_s=delay))

    def limits(self) -> dict[str, Any]:
        """``{max, duration_s, concurrency, limited_for_s}`` (None: not set)."""
        return self._driver.drive(self.core.op_limits())

    def pause(self) -> None:
        """Stop every worker of this queue from claiming; adds still land."""
        self._driver.drive(self.core.op_pause(True))

    def resume(self) -> None:
        self._driver.drive(self.core.op_pause(False))

    def drain(self, delayed: bool = False) -> int:
        """Remove waiting (and prioritized; with delayed=True also delayed) jobs."""
        return self._driver.drive(self.core.op_drain(delayed))

    def clean(self, grace: float, limit: int = 1000, state: str = "completed") -> list[str]:
        """Remove up to ``limit`` jobs of ``state`` older than ``grace`` seconds."""
        return self._driver.drive(self.core.op_clean(round(grace * 1000), limit, state))

    def obliterate(self, force: bool = False) -> None:
        """Delete the queue and every job; refuses while jobs are active unless forced."""
        self._driver.drive(self.core.op_obliterate(force))

    def retry_jobs(self, state: str = "failed", count: int | None = None,
                   timestamp: float | datetime | None = None,
                   reset_attempts_made: bool = False) -> int:
        """Move finished jobs of ``state`` back to wait, oldest first, at most
        ``count``, only those finished at or before ``timestamp`` (epoch
        seconds or a datetime) when given; how many. As BullMQ's retryJobs,
        attempts_made is kept unless ``reset_attempts_made``."""
        return self._driver.drive(self.core.op_retry_jobs(
            state, count, epoch_ms(timestamp), reset_attempts_made))

    def promote_jobs(self, count: int | None = None) -> int:
        return self._driver.drive(self.core.op_promote_jobs(count))

    def set_max_events(self, max_events: int) -> None:
        """Cap the event stream at about this many entries (default 10,000)."""
        self._driver.drive(self.core.op_set_max_events(max_events))

    # -- schedulers (repeatable jobs) -------------------------------------------

    def upsert_scheduler(
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
        """Create or redefine the scheduler ``scheduler_id`` (repeatable jobs).

        Exactly one of ``cron`` ("*/15 * * * *", or 6 fields with seconds
        first) or ``every`` (seconds, a timedelta or "15m"). ``tz``: IANA zone
        of the cron expression (UTC by default). ``start``/``end``: datetimes
        (naive ones in ``tz``) or epoch ms. ``limit``: runs in all.
        ``template``: ``{"name", "data", "options"}`` of each run's job (name
        defaults to the id; options as for ``add``, without job_id/delay).
        An unchanged definition changes nothing; a new one replaces the
        pending run. Runs are advanced by a supervisor (docs/decisions.md).
        """
        schedule = Schedule.build(cron=cron, every=every, tz=tz, start=start, end=end,
                                  limit=limit, immediately=immediately)
        return self._driver.drive(sched.op_upsert(self.core, scheduler_id, schedule, template,
                                                    count))

    def get_scheduler(self, scheduler_id: str) -> sched.SchedulerInfo | None:
        return self._driver.drive(sched.op_get(self.core, scheduler_id))

    def list_schedulers(self, start: int = 0, end: int = -1) -> list[sched.SchedulerInfo]:
        """Schedulers by next run time (done ones last)."""
        return self._driver.drive(sched.op_list(self.core, start, end))

    def remove_scheduler(self, scheduler_id: str) -> bool:
        """Delete a scheduler and its pending run; False if there was none."""
        return self._driver.drive(sched.op_remove(self.core, scheduler_id))

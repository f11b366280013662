"""The worker loop: claim with a fenced lease, run the processor, write the outcome.

``Worker`` runs inline coroutines (mode "async") or plain functions in
threads (mode "thread") inside the current event loop; the supervisor
(process mode) builds on the same parts. All Redis writes for jobs go
through the :class:`~rqsup.supervisor.pump.Pump`; leases are renewed by a
timer of their own, so a busy processor never loses its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aredis

from rqsup import backoff
from rqsup.errors import Code, EncodeError, InvalidOption, MalformedJob, WaitingChildren, error_info
from rqsup.queue import codec
from rqsup.queue.connection import CONNECTION_ERRORS, async_client
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.options import JobOptions
from rqsup.queue.options import build as build_options
from rqsup.queue.record import JobRecord, fields_of
from rqsup.supervisor import flowjobs, maintenance
from rqsup.supervisor.active import ActiveJob, Running
from rqsup.supervisor.child import ChildJobError
from rqsup.supervisor.pool import ChildPool, NotDispatched, SandboxSettings
from rqsup.supervisor.processors import JobTimedOut, RawJSON, load_processor
from rqsup.supervisor.pump import Pump
from rqsup.supervisor.threads import ThreadRunner

log = logging.getLogger("rqsup.worker")

MODES = ("async", "thread", "process")
#: Adaptive prefetch (process mode): hold about this much work beyond the
#: running jobs, at least one job and at most MAX_PREFETCH_PER_SLOT per child.
PREFETCH_WINDOW_S = 0.05
MAX_PREFETCH_PER_SLOT = 32


class Worker:
    """Process jobs of one queue in this event loop.

    ``processor(job)`` gets an :class:`ActiveJob` and returns a JSON value;
    raising fails the attempt (``UnrecoverableError``: no more attempts).
    ``await worker.run()`` runs until ``await worker.close()``.
    """

    def __init__(
        self,
        queue: str,
        processor: Callable[[ActiveJob], Any] | str,
        *,
        url: str | None = None,
        connection: aredis.Redis | None = None,
        prefix: str = "rqsup",
        mode: str = "async",
        concurrency: int = 1,
        name: str | None = None,
        lease_s: float = 30.0,
        renew_interval_s: float | None = None,
        stall_interval_s: float = 15.0,
        max_stalled_count: int = 1,
        stall_counts_as_attempt: bool = False,
        block_timeout_s: float = 5.0,
        backoff_strategies: Mapping[str, backoff.BackoffStrategy] | None = None,
        job_defaults: Mapping[str, Any] | None = None,
        sandbox: SandboxSettings | None = None,
        worker_id: str | None = None,
        forkserver: Any = None,
        prefetch: int | None = None,
        own_renewer: bool = True,
    ) -> None:
        if mode not in MODES:
            raise InvalidOption(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(processor, str) and mode != "process":
            processor = load_processor(processor)
        is_coro = inspect.iscoroutinefunction(processor) or inspect.iscoroutinefunction(
            getattr(processor, "__call__", None)  # noqa: B004
        )
        if mode == "async" and not is_coro:
            raise InvalidOption(f"mode 'async' needs a coroutine function, got {processor!r}")
        if mode == "thread" and (is_coro or not callable(processor)):
            raise InvalidOption(f"mode 'thread' needs a plain function, got {processor!r}")
        if mode == "process" and is_coro:
            raise InvalidOption(f"mode 'process' needs a plain function, got {processor!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOption(f"concurrency must be an int >= 1, got {concurrency!r}")
        if lease_s < 1:
            raise InvalidOption(f"lease_s must be >= 1 second, got {lease_s!r}")
        renew = renew_interval_s if renew_interval_s is not None else lease_s / 3
        if not 0 < renew < lease_s:
            raise InvalidOption(f"renew_interval_s must be between 0 and lease_s, got {renew!r}")
        if max_stalled_count < 0:
            raise InvalidOption(f"max_stalled_count must be >= 0, got {max_stalled_count!r}")
        self.core = QueueCore(queue, prefix)
        self.queue_name = queue
        self.processor = processor
        self.mode = mode
        self.concurrency = concurrency
        #: Jobs held beyond the running ones (process mode): a child that frees
        #: up starts its next job at once instead of after a Redis round trip.
        #: Their leases are renewed like the others'.
        #: None in process mode: adaptive (about PREFETCH_WINDOW_S of work).
        if prefetch is None and mode != "process":
            prefetch = 0
        if prefetch is not None and prefetch < 0:
            raise InvalidOption(f"prefetch must be >= 0, got {prefetch!r}")
        self.prefetch = prefetch
        #: False under the supervisor: its one renewer covers every queue.
        self.own_renewer = own_renewer
        self.lease_ms = round(lease_s * 1000)
        self.renew_interval_s = renew
        self.stall_interval_s = stall_interval_s
        self.max_stalled_count = max_stalled_count
        self.stall_counts_as_attempt = stall_counts_as_attempt
        self.block_timeout_s = block_timeout_s
        self.strategies = dict(backoff_strategies or {})
        base = name or socket.gethostname()
        self.worker_id = worker_id or f"{base}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Queue-level job defaults (config), applied to options a job did not set.
        self.default_opts = build_options({}, job_defaults or {})[1].to_json_dict()
        self.client = connection if connection is not None else async_client(url)
        self._own_client = connection is None
        self.block_client = self.client
        self.wake_key = self.core.keys.worker_wake(self.worker_id)
        #: How long a short claim registers us for hand-offs: past our next
        #: re-claim (one block timeout), so a live idle worker stays listed.
        self.idle_ms = round((block_timeout_s + 1.0) * 1000)
        self.idle_member = f"{self.lease_ms}|{self.worker_id}"
        self.driver = AsyncDriver(self.client)
        self.running: dict[str, Running] = {}  # by token
        self.claiming = True
        self.renewals = 0
        self.processed = 0
        self._threads = ThreadRunner(queue) if mode == "thread" else None
        self.pool = (
            ChildPool(queue, processor, concurrency, sandbox, ctx=forkserver)
            if mode == "process" else None
        )
        self._prepared = False
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._done = asyncio.Event()
        self._close_timeout_s = 30.0
        self._started = False
        self.pump = Pump(self)

    def __repr__(self) -> str:
        return f"Worker({self.queue_name!r}, mode={self.mode!r}, id={self.worker_id!r})"

    @property
    def capacity(self) -> int:
        """How many jobs we hold at most: running plus prefetched. Adaptive
        prefetch keeps about PREFETCH_WINDOW_S of work queued per queue, so
        short jobs get batched while long ones are not hoarded from other
        supervisors."""
        if self.prefetch is not None:
            return self.concurrency + self.prefetch
        avg = self.pool.avg_job_s if self.pool is not None else None
        if avg is None:
            return 2 * self.concurrency
        extra = math.ceil(self.concurrency * PREFETCH_WINDOW_S / max(avg, 1e-6))
        return self.concurrency + min(max(extra, 1), MAX_PREFETCH_PER_SLOT * self.concurrency)

    def undispatched(self) -> int:
        """Process mode: jobs claimed and waiting for a child."""
        return self.pool.waiting if self.pool is not None else 0

    def _dispatched(self, r: Running) -> None:
        r.dispatched = True
        self.pump.wake.set()  # a lingering pump re-checks whether children run dry

    def busy_count(self) -> int:
        return sum(1 for r in self.running.values() if not r.finished)

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`close`; then drain gracefully and return."""
        if self._started:
            raise RuntimeError("Worker.run() was already called")
        self._started = True
        await self.prepare()
        log.info("worker %s: queue %s, mode %s, concurrency %d",
                 self.worker_id, self.queue_name, self.mode, self.concurrency)
        pump = asyncio.create_task(self.pump.run(), name="rqsup pump")
        waiter = asyncio.create_task(maintenance.wait_for_work(self), name="rqsup wait-for-work")
        timers = [asyncio.create_task(maintenance.sweep_stalled(self), name="rqsup sweep")]
        if self.own_renewer:
            timers.append(
                asyncio.create_task(maintenance.renew_leases(self), name="rqsup renew")
            )
        loops = [pump, waiter, *timers]
        try:
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *loops], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop:
                    t.result()  # a loop died: raise its error
            await self._drain(pump, waiter)
        finally:
            for t in loops:
                t.cancel()
            # Bounded: a blocked redis-py call can swallow a cancel.
            _done, pending = await asyncio.wait(loops, timeout=2.0)
            if pending:
                log.warning("worker %s: %d loop(s) still stopping: %s", self.worker_id,
                            len(pending), [t.get_name() for t in pending])
            if self._threads:
                self._threads.shutdown()
            if self.pool is not None:
                await self.pool.close()
            if self._own_client:
                await self.client.aclose()
            self._done.set()

    async def prepare(self) -> None:
        """Boot the child pool (process mode) before claiming anything."""
        if self._prepared:
            return
        self._prepared = True
        if self.pool is not None:
            await self.pool.start()
            self.pool.on_recovered = self.pump.want_claim

    def hurry(self) -> None:
        """Quick shutdown: stop waiting for running jobs; give them back now."""
        self._hurry.set()

    def can_claim(self) -> bool:
        return self.claiming and (self.pool is None or self.pool.healthy())

    async def close(self, timeout: float = 30.0) -> None:
        """Stop claiming, let running jobs finish (leases still renewed) for up to
        ``timeout`` seconds, then give the rest back to the queue."""
        self._close_timeout_s = timeout
        self._stop.set()
        if self._started:
            await self._done.wait()
        elif self._own_client:
            await self.client.aclose()

    async def _drain(self, pump: asyncio.Task[None], waiter: asyncio.Task[None]) -> None:
        """Nothing is cancelled in the middle of a Redis call here: a cancel can
        lose a reply (a claim's jobs would sit active until their lease ran out)."""
        self.claiming = False
        self.pump.idle.set()  # the wait-for-work loop sees claiming off and returns
        if self.pool is not None:
            # Prefetched jobs still waiting for a child do not start now.
            self.pool.draining = True
            for r in self.running.values():
                if not r.dispatched and not r.finished and r.task is not None:
                    r.lost = True
                    r.task.cancel()
        with contextlib.suppress(*CONNECTION_ERRORS):
            # No more hand-offs to us; and wake our own blocked wait.
            await self.client.zrem(self.core.keys.idle, self.idle_member)
            await self.client.zadd(self.wake_key, {"stop": 0})
        deadline = time.monotonic() + self._close_timeout_s
        while time.monotonic() < deadline:
            # Every running job has a task (thread jobs await their thread in it).
            tasks = [
                r.task for r in self.running.values()
                if r.task and not r.finished and not r.task.done()
            ]
            if not tasks or self._hurry.is_set():
                break
            hurry = asyncio.create_task(self._hurry.wait())
            await asyncio.wait([*tasks, hurry], timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        for r in self.running.values():
            if not r.finished:
                r.lost = True
                if r.task:
                    r.task.cancel()
        # The pump sends what is queued (outcomes, the orphan check), then returns.
        self.pump.stopping = True
        self.pump.wake.set()
        grace = max(5.0, self.block_timeout_s)
        await asyncio.wait([pump, waiter], timeout=grace)
        if not pump.done():
            log.error("worker %s: could not write queued outcomes within %.0fs (Redis "
                      "unreachable?); the stall sweeper will recover their jobs",
                      self.worker_id, grace)
            return
        pump.result()
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.client.delete(self.wake_key)
        # Everything still active under our id (jobs cut off above, jobs of a
        # claim that was in flight when the close began) goes back at once.
        try:
            ids = await asyncio.wait_for(
                self.driver.execute(self.core.script("requeue_worker", self.worker_id, 0)),
                grace,
            )
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            log.error("worker %s: could not give back unfinished jobs (%s); the stall "
                      "sweeper will recover them", self.worker_id, exc)
            return
        if ids:
            log.warning("worker %s: gave back %d unfinished job(s): %s", self.worker_id,
                        len(ids), [codec.text(i) for i in ids])

    # -- jobs -----------------------------------------------------------------

    def start_job(self, job_id: str, token: str, fields: Any) -> None:
        record = JobRecord(job_id, fields_of(fields))
        try:
            record.validate()
            # Queue defaults (config) fill in what the job's own options left out;
            # decode the options once either way.
            options = (record.options_over(self.default_opts) if self.default_opts
                       else record.options)
        except MalformedJob as exc:
            r = Running(record, token, JobOptions())
            self.running[token] = r
            log.error("queue %s: %s; failing it", self.queue_name, exc)
            self._fail(r, {"type": "MalformedJob", "message": str(exc), "stacktrace": "",
                           "unrecoverable": True})
            return
        r = Running(record, token, options)
        self.running[token] = r
        r.task = asyncio.create_task(self._execute(r), name=f"rqsup job {job_id}")

    def _sink(self, r: Running) -> Callable[[str, str], None]:
        def sink(kind: str, payload: str) -> None:
            if r.lost or r.finished:
                return
            if kind == "children":  # process mode: the child's job.add_children
                flowjobs.on_children_message(self, r, payload)
                return
            if kind == "progress":
                script = self.core.script("progress", r.id, r.token, payload)
            else:
                script = self.core.script("log", r.id, r.token, r.options.keep_logs, payload)
            self.pump.write(r.id, r.token, script)

        if self.mode == "async":
            return sink
        loop = asyncio.get_running_loop()

        def from_thread(kind: str, payload: str) -> None:
            loop.call_soon_threadsafe(sink, kind, payload)

        return from_thread

    async def _execute(self, r: Running) -> None:
        sink = self._sink(r)
        timeout_s = r.options.timeout_ms / 1000 if r.options.timeout_ms else None
        try:
            async with asyncio.timeout(timeout_s) as cm:
                # A parent (flows) gets what its children left before it starts.
                flow = await flowjobs.fetch(self, r) if flowjobs.is_parent(r) else None
                if self.pool is not None:
                    # Process mode hands the child the raw JSON: no ActiveJob here.
                    result = RawJSON(await self.pool.run(
                        r.id, r.record.name, r.record.raw.get("data") or "null",
                        r.record.attempts_made, sink, lambda: self._dispatched(r),
                        flow=flowjobs.to_json(flow) if flow is not None else None,
                    ))
                else:
                    job = ActiveJob(r.record, sink, flow, flowjobs.spawner(self, r))
                    if self._threads is not None:
                        fut = self._threads.submit(self.processor, job)  # type: ignore[arg-type]
                        result = await asyncio.shield(fut)
                    else:
                        result = await self.processor(job)  # type: ignore[operator]
        except asyncio.CancelledError:
            if r.lost:
                return  # lease lost or shutdown: the outcome is not ours to write
            raise
        except TimeoutError as exc:
            # The processor's own TimeoutError is an ordinary failure.
            err: BaseException = exc
            if cm.expired():
                err = JobTimedOut(f"job timed out after {timeout_s:g}s (timeout option)")
            self._fail(r, error_info(err))
        except ChildJobError as exc:  # the processor raised, in its child
            if exc.info.get("type") == "WaitingChildren":  # matched by name there
                flowjobs.wait_children(self, r)
            else:
                self._fail(r, exc.info)
        except NotDispatched:
            r.lost = True  # never started: given back with the rest at close
        except WaitingChildren:  # step jobs: not a failure, not a completion
            flowjobs.wait_children(self, r)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            self._fail(r, error_info(exc))
        else:
            self._complete(r, result)

    def _complete(self, r: Running, result: Any) -> None:
        if r.lost:
            return
        if r.children_error:
            self._fail(r, flowjobs.children_error_info(r))
            return
        try:
            if isinstance(result, RawJSON):
                encoded = result.text  # encoded (and checked) by the child
            else:
                encoded = codec.encode(result, f"result of job {r.id}")
        except EncodeError as exc:
            info = error_info(exc)
            info["unrecoverable"] = True
            self._fail(r, info)
            return
        keep = r.options.completed_retention
        r.finished = True
        self.pump.complete(r.id, r.token, [r.id, r.token, encoded, keep["count"], keep["age_ms"]])

    def _fail(self, r: Running, info: dict[str, Any]) -> None:
        if r.lost:
            return
        if info.get("rate_limit_delay_s") is not None:  # RateLimited: not a failure
            r.finished = True
            delay_ms = round(float(info["rate_limit_delay_s"]) * 1000)
            self.pump.end(r.id, r.token, self.core.script("rate_limited", r.id, r.token, delay_ms))
            return
        made = r.record.attempts_made + 1
        message = info["message"]
        delay_ms = -1
        attempts = r.options.attempts if "attempts" in self.default_opts else r.record.attempts
        if not info["unrecoverable"] and made < attempts:
            try:
                delay_ms = backoff.retry_delay_ms(
                    r.options.backoff, made, info["type"], message, r.record.raw.get("data"),
                    self.strategies,
                )
            except Exception as exc:  # a bad or unknown custom strategy
                message = f"{message}; no retry: {exc}"
                delay_ms = -1
        keep = r.options.failed_retention
        r.finished = True
        self.pump.fail(r.id, r.token, [
            r.id, r.token, message[:4000], info["type"], info["stacktrace"], delay_ms,
            keep["count"], keep["age_ms"], attempts if "attempts" in self.default_opts else "",
        ])

    def on_acked(self, job_id: str, token: str, code: int, outcome: str | None) -> None:
        """Redis recorded (or refused) a job's outcome: free its slot."""
        self.running.pop(token, None)
        self.processed += 1
        if code < 0:
            log.warning("queue %s: result of job %s not written: %s", self.queue_name, job_id,
                        Code(code).name.lower().replace("_", " "))
        elif outcome and outcome != "completed":
            log.info("queue %s: job %s %s", self.queue_name, job_id, outcome)
        self.pump.wake.set()

    def on_lease_lost(self, job_id: str, token: str, when: str) -> None:
        r = self.running.pop(token, None)
        if r is None or r.lost:
            return
        r.lost = True
        log.warning("queue %s: lease of job %s lost %s; its result will not be written",
                    self.queue_name, job_id, when)
        if r.task is not None:
            # async: the coroutine is cancelled; thread: we stop waiting and the
            # thread runs on, abandoned (ThreadRunner starts a new one).
            r.task.cancel()
        self.pump.want_claim()

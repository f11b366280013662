"""The worker loop: claim with a fenced lease, run the processor, write the outcome.

``Worker`` runs inline coroutines (mode "async"), plain functions in threads
(mode "thread") or in sandboxed child processes (mode "process") from the
current event loop. All Redis writes for jobs go through the
:class:`~rqsup.supervisor.pump.Pump`; leases are renewed by a timer of their
own, so a busy processor never loses its lease.

Every loop of a worker runs under a supervision tree (:mod:`.tree`): the
supervisor's, or the worker's own when it runs alone. When the worker's
pump or idle wait crashes, everything it held goes back to the queue at once
(counted as a stall), it takes a fresh worker id, and it starts again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aredis

from rqsup import backoff
from rqsup.errors import Code, InvalidOption, JobFailed
from rqsup.queue.connection import async_client, never_resends, without_retries
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.options import build as build_options
from rqsup.supervisor import cancels, jobrun, maintenance, manual
from rqsup.supervisor.active import ActiveJob, Running
from rqsup.supervisor.joblog import job_line, seconds
from rqsup.supervisor.local_events import LocalEvents
from rqsup.supervisor.manual import ManualJob
from rqsup.supervisor.pool import ChildPool, SandboxSettings
from rqsup.supervisor.processors import load_processor
from rqsup.supervisor.pump import Pump
from rqsup.supervisor.threads import ThreadRunner
from rqsup.supervisor.tree import Supervised, Tree

if TYPE_CHECKING:
    from rqsup.observe.metrics import Metrics, QueueMetrics

log = logging.getLogger("rqsup.worker")

MODES = ("async", "thread", "process")
#: Adaptive prefetch (process mode): hold about this much work beyond the
#: running jobs, at least one job and at most MAX_PREFETCH_PER_SLOT per child.
PREFETCH_WINDOW_S = 0.05
MAX_PREFETCH_PER_SLOT = 32


@dataclass(frozen=True)
class SupervisorParts:
    """What only the supervisor gives its workers (never a user): its worker
    id for the queue, its forkserver, its supervision tree. With these, the
    supervisor's one lease renewer covers the worker (it has none of its own)."""

    worker_id: str
    forkserver: Any
    tree: Tree


class Worker:
    """Process jobs of one queue in this event loop.

    ``processor(job)`` gets an :class:`ActiveJob` and returns a JSON value;
    raising fails the attempt (``UnrecoverableError``: no more attempts).
    ``await worker.run()`` runs until ``await worker.close()``.
    """

    #: Set by :meth:`supervised` before ``__init__`` runs; None for a user's worker.
    _parts: SupervisorParts | None = None

    @classmethod
    def supervised(cls, parts: SupervisorParts, queue: str, processor: str,
                   **options: Any) -> Worker:
        """A worker of the supervisor (``rqsup start``): the internal path for
        what the public constructor does not take."""
        w = cls.__new__(cls)
        w._parts = parts
        w.__init__(queue, processor, **options)  # type: ignore[misc]
        return w

    def __init__(
        self,
        queue: str,
        processor: Callable[[ActiveJob], Any] | str | None,
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
        prefetch: int | None = None,
        metrics: Metrics | None = None,
        wait_replicas: int = 0,
    ) -> None:
        parts = self._parts
        if mode not in MODES:
            raise InvalidOption(f"mode must be one of {MODES}, got {mode!r}")
        #: No processor: manual processing (get_next_job; rqsup.supervisor.manual).
        self.manual = processor is None
        if self.manual and mode != "async":
            raise InvalidOption("a worker without a processor (manual processing) has mode "
                                f"'async', got {mode!r}")
        if isinstance(processor, str) and mode != "process":
            processor = load_processor(processor)
        is_coro = inspect.iscoroutinefunction(processor) or inspect.iscoroutinefunction(
            getattr(processor, "__call__", None)  # noqa: B004
        )
        if mode == "async" and not is_coro and not self.manual:
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
        self.own_renewer = parts is None
        self.lease_ms = round(lease_s * 1000)
        self.renew_interval_s = renew
        self.stall_interval_s = stall_interval_s
        self.max_stalled_count = max_stalled_count
        self.stall_counts_as_attempt = stall_counts_as_attempt
        self.block_timeout_s = block_timeout_s
        self.strategies = dict(backoff_strategies or {})
        base = name or socket.gethostname()
        self._base_id = (parts.worker_id if parts is not None
                         else f"{base}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        self._restarts = 0
        #: Queue-level job defaults (config), applied to options a job did not set.
        self.default_opts = build_options({}, job_defaults or {})[1].to_json_dict()
        # Our own connections never re-send a command (a resent claim would
        # claim twice); the pump and the idle wait resend themselves.
        if connection is None:
            self.client = async_client(url, retries=0)
        else:
            self.client = connection if never_resends(connection) else \
                without_retries(connection)
        self._own_client = self.client is not connection
        self.block_client = self.client
        #: How long a short claim registers us for hand-offs: past our next
        #: re-claim (one block timeout), so a live idle worker stays listed.
        self.idle_ms = round((block_timeout_s + 1.0) * 1000)
        self.driver = AsyncDriver(self.client, wait_replicas)
        self.started_at = time.time()
        self.running: dict[str, Running] = {}  # by token
        self.events = LocalEvents()
        #: Prometheus job metrics of this queue (rqsup.observe), or None.
        self.metrics: QueueMetrics | None = (metrics.for_queue(queue)
                                             if metrics is not None else None)
        self.claiming = True
        self.renewals = 0
        self.processed = 0
        self._threads = ThreadRunner(queue) if mode == "thread" else None
        self.pool = (
            ChildPool(queue, processor, concurrency, sandbox,  # type: ignore[arg-type]
                      ctx=parts.forkserver if parts is not None else None,
                      defaults=self.default_opts)
            if mode == "process" else None
        )
        #: The supervision tree to run under (the supervisor's, or our own).
        self.tree: Tree | None = parts.tree if parts is not None else None
        self._own_tree = False
        self._unit: Supervised | None = None
        self._prepared = False
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._done = asyncio.Event()
        self._close_timeout_s = 30.0
        self._started = False
        self._set_identity(self._base_id)

    def _set_identity(self, worker_id: str) -> None:
        """A fresh worker id comes with a fresh pump: nothing of a crashed
        incarnation (queued writes, a hand-off registration) carries over."""
        self.worker_id = worker_id
        self.wake_key = self.core.keys.worker_wake(worker_id)
        self.idle_member = f"{self.lease_ms}|{worker_id}"
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

    def busy_count(self) -> int:
        return sum(1 for r in self.running.values() if not r.finished)

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`close`; then drain gracefully and return."""
        if self._started:
            raise RuntimeError("Worker.run() was already called")
        if self.manual:
            raise InvalidOption("this worker has no processor (manual processing): take jobs "
                                "with get_next_job(token), not run()")
        self._started = True
        await self.prepare()
        assert self.tree is not None
        tree = self.tree
        q = self.queue_name
        log.info("worker %s: queue %s, mode %s, concurrency %d",
                 self.worker_id, q, self.mode, self.concurrency)
        self._unit = tree.start(f"worker {q}", self._serve, queue=q, give_back=self._crashed)
        timers = [tree.start(f"stall sweeper {q}", lambda: maintenance.sweep_stalled(self),
                             queue=q)]
        timers.append(tree.start(f"cancel listener {q}", lambda: cancels.listen(self), queue=q))
        if self.own_renewer:
            timers.append(tree.start(f"lease renewer {q}",
                                     lambda: maintenance.renew_leases(self), queue=q))
            timers.append(tree.start(f"heartbeat {q}",
                                     lambda: maintenance.heartbeat(self), queue=q))
        try:
            await self._stop.wait()
            await maintenance.drain(self, self._unit)
        finally:
            for t in timers:
                await tree.stop(t)
            if self._unit.task is not None and not self._unit.task.done():
                await tree.stop(self._unit)
            if self._threads:
                self._threads.shutdown()
            if self.pool is not None:
                await self.pool.close()
            if self._own_tree:
                await tree.stop_all()
            if self._own_client:
                await self.client.aclose()
            self._done.set()

    async def _serve(self) -> None:
        """The worker proper: the pump and the idle wait, which share its state;
        either one crashing ends both (the tree gives back and restarts)."""
        pump = asyncio.create_task(self.pump.run(), name=f"rqsup pump {self.queue_name}")
        waiter = asyncio.create_task(maintenance.wait_for_work(self),
                                     name=f"rqsup wait-for-work {self.queue_name}")
        try:
            done, _ = await asyncio.wait([pump, waiter], return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in (pump, waiter):
                t.cancel()
            # Bounded: a blocked redis-py call can swallow a cancel.
            await asyncio.wait([pump, waiter], timeout=2.0)

    async def _crashed(self, exc: BaseException) -> None:
        """The worker's loop crashed: give back every job it held (as a stall,
        so that a job that keeps crashing it fails in the end) and take a new
        worker id, so nothing of the old one (a stale hand-off, a late reply)
        reaches the next."""
        old = self.worker_id
        if self.events.active:
            self.events.emit("error", exc)
        for r in list(self.running.values()):
            r.lost = True
            r.stop_reason = "its worker crashed"
            if r.task is not None:
                r.task.cancel()
        self.running.clear()
        self._restarts += 1
        self._set_identity(f"{self._base_id}~{self._restarts}")
        await self.give_back(old, count_stall=True)

    async def give_back(self, worker_id: str, *, count_stall: bool = False,
                        within_s: float | None = None) -> None:
        """Requeue everything active under ``worker_id`` (maintenance.give_back)."""
        await maintenance.give_back(self, worker_id, count_stall=count_stall,
                                    within_s=within_s)

    async def prepare(self) -> None:
        """Boot the child pool (process mode) before claiming anything."""
        if self._prepared:
            return
        self._prepared = True
        if self.tree is None:
            self.tree = Tree()
            self._own_tree = True
        if self.pool is not None:
            await self.pool.start(self.tree)
            self.pool.on_recovered = lambda: self.pump.want_claim()

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

    # -- jobs (the work itself is in jobrun) ----------------------------------------

    def start_job(self, job_id: str, token: str, fields: Any) -> None:
        jobrun.start(self, job_id, token, fields)

    def on_acked(self, r: Running | None, job_id: str, token: str, code: int,
                 outcome: str | None) -> None:
        """Redis recorded (or refused) a job's outcome: free its slot."""
        self.running.pop(token, None)
        self.processed += 1
        if self.metrics is not None and r is not None and code >= 0:
            jobrun.observe_end(self.metrics, r, outcome)
        if self.events.active and r is not None and code >= 0:
            if outcome == "completed":
                self.events.emit("completed", r.record, r.result)
            elif outcome == "failed" and r.error is not None:
                self.events.emit("failed", r.record, JobFailed(r.id, *r.error, None))
        attempt = (r.attempt if r is not None else 0)
        attempts = (r.attempts if r is not None else 0)
        if code == Code.MALFORMED:
            job_line(logging.ERROR, self.queue_name, job_id, attempt, attempts,
                     "malformed in Redis: failed as MalformedJob or set aside, not %s",
                     outcome or "written")
        elif code < 0:
            job_line(logging.WARNING, self.queue_name, job_id, attempt, attempts,
                     "result not written: %s", Code(code).name.lower().replace("_", " "))
        elif r is not None and r.error is not None and outcome in ("retry", "failed"):
            etype, message = r.error
            if outcome == "retry":
                when = "now" if r.retry_delay_ms <= 0 else f"in {seconds(r.retry_delay_ms)}"
                job_line(logging.WARNING, self.queue_name, job_id, attempt, attempts,
                         "failed: %s: %s; next attempt %s", etype, message, when,
                         error_type=etype)
            else:
                job_line(logging.ERROR, self.queue_name, job_id, attempt, attempts,
                         "failed for good: %s: %s", etype, message, error_type=etype)
        elif outcome and outcome not in ("completed", "failed", "retry"):
            job_line(logging.INFO, self.queue_name, job_id, attempt, attempts, "%s", outcome)
        self.pump.wake.set()

    async def get_next_job(self, token: str, block: bool = True) -> ManualJob | None:
        """Manual processing (a worker made with processor None): take the next
        job under the caller's ``token``; see rqsup.supervisor.manual."""
        if not self.manual:
            raise InvalidOption("get_next_job is for a worker without a processor")
        return await manual.get_next_job(self, token, block)

    def start_stall_check(self) -> asyncio.Task[None]:
        """Run the stall sweep on its own (manual processing); cancel the task to stop."""
        return manual.start_stall_check(self)

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Local events (BullMQ's worker.on): completed, failed, progress,
        stalled, error, drained; see rqsup.supervisor.local_events."""
        self.events.on(event, callback)

    def cancel_job(self, job_id: str, reason: str | None = None) -> bool:
        """Cancel a job this worker runs (BullMQ's worker.cancelJob); False if
        it runs no such job. In Redis too, use ``queue.cancel`` (any process)."""
        found = [r for r in self.running.values() if r.id == job_id]
        return any([cancels.cancel_running(self, r, reason or "cancelled") for r in found])

    def cancel_all(self, reason: str | None = None) -> int:
        """Cancel every job this worker runs; how many."""
        return sum(cancels.cancel_running(self, r, reason or "cancelled")
                   for r in list(self.running.values()))

    def on_lease_lost(self, r: Running, when: str) -> None:
        """Another holder owns the job now (or it ended): stop running it."""
        if self.running.get(r.token) is r:
            del self.running[r.token]
        if r.lost:
            return
        r.lost = True
        r.stop_reason = "lease lost"
        job_line(logging.WARNING, self.queue_name, r.id, r.attempt, r.attempts,
                 "lease lost %s; its result will not be written", when)
        if r.task is not None:
            # async: the coroutine is cancelled; thread: we stop waiting and the
            # thread runs on, abandoned (ThreadRunner starts a new one); process:
            # the child is killed.
            r.task.cancel()
        self.pump.want_claim()

    def abandon(self, r: Running, why: str) -> None:
        """A job this worker cannot go on with (a bug, a write Redis keeps
        refusing): stop it and give it back (the pump's orphan check requeues
        every job active under our id that we do not know)."""
        self.running.pop(r.token, None)
        if not r.lost:
            r.lost = True
            r.stop_reason = why
            if r.task is not None and not r.task.done():
                r.task.cancel()
        job_line(logging.ERROR, self.queue_name, r.id, r.attempt, r.attempts,
                 "given back to the queue: %s", why)
        self.pump.check_orphans = True
        self.pump.wake.set()

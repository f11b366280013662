"""The child pool of one queue (process mode): pre-started, reused, supervised.

Children come from a multiprocessing forkserver: a clean process, started by
exec with a scrubbed environment and not dumpable, that imported the
processor modules once; it forks each child, so a child starts in
milliseconds and never inherits the supervisor's event loop, sockets,
threads or secrets. The pool boots children (handshake), hands them jobs,
reads their frames from the event loop, kills a child's whole tree on
timeout, lease loss or a memory breach, and replaces children that crash,
get old or grow fat. Each child has a state (:class:`ChildState`); each slot
is filled, backing off after boot failures, or fatal after too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rqsup.sandbox.hygiene import scrubbed_env
from rqsup.sandbox.runtime import ChildSpec
from rqsup.supervisor.child_handle import ChildCrashed, ChildHandle, ChildJobError, ChildState
from rqsup.supervisor.child_output import ChildLimits

if TYPE_CHECKING:
    from rqsup.supervisor.tree import Supervised, Tree

log = logging.getLogger("rqsup.pool")

#: Consecutive boot failures before the queue's processor is marked failed.
MAX_BOOT_FAILURES = 5
BOOT_BACKOFF_MAX_S = 30.0


class NotDispatched(Exception):
    """A job that waited for a child when shutdown began: it was not started."""


class SlotState(enum.Enum):
    FILLED = "filled"      # a child (in whatever ChildState) holds the slot
    BOOTING = "booting"    # a child is being started for it
    BACKOFF = "backoff"    # its last boot failed; the next is waiting
    FATAL = "fatal"        # boots keep failing: the queue's processor is failed
                           # (retried every BOOT_BACKOFF_MAX_S all the same)


@dataclass(frozen=True)
class SandboxSettings:
    """Limits of a queue's children (from ``[queues.sandbox]``)."""

    isolation: str = "pooled"  # or "per-job"
    memory_soft_bytes: int | None = None
    memory_hard_bytes: int | None = None
    max_jobs_per_child: int | None = None
    idle_timeout_s: float | None = None
    boot_timeout_s: float = 10.0
    nice: int = 5
    user: str | int | None = None
    group: str | int | None = None
    rlimits: tuple[tuple[str, int], ...] = ()
    kill_grace_s: float = 2.0
    #: A cancelled job's processor has this long to return before its child
    #: is killed (it sees job.cancelled at once).
    cancel_grace_s: float = 5.0
    #: Added to a child's scrubbed environment.
    env: tuple[tuple[str, str], ...] = ()
    limits: ChildLimits = field(default_factory=ChildLimits)


def retire_reason(why: str) -> str:
    """The bounded class of why a child was replaced (a metric label)."""
    for word, reason in (("timed out", "timeout"), ("memory", "memory"),
                         ("cancelled", "cancel"), ("lease lost", "lease"), ("crash", "crash"),
                         ("died", "crash"), ("protocol", "crash"), ("shutdown", "shutdown")):
        if word in why:
            return reason
    return "recycle"  # max_jobs_per_child, per-job isolation, idle, a reload


def forkserver_context(preload: list[str]) -> Any:
    """The process-wide forkserver, preloading the processor modules (through
    rqsup.sandbox.preload, which survives a module that fails to import).
    Preload is read when the forkserver starts: the first pool's list wins."""
    ctx = mp.get_context("forkserver")
    known = [m for m in os.environ.get("RQSUP_PRELOAD", "").split(",") if m]
    os.environ["RQSUP_PRELOAD"] = ",".join(dict.fromkeys([*known, *preload]))
    ctx.set_forkserver_preload(["rqsup.sandbox.runtime", "rqsup.sandbox.preload"])
    return ctx


def start_forkserver() -> None:
    """Start the forkserver now, with the scrubbed environment: a child is a
    fork of it, and its initial environment (``/proc/self/environ``) is the
    forkserver's, so the supervisor's secrets must never be in it."""
    from multiprocessing import forkserver

    if getattr(forkserver._forkserver, "_forkserver_pid", None):
        return
    saved = dict(os.environ)
    clean = scrubbed_env(saved)
    try:
        os.environ.clear()
        os.environ.update(clean)
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def forkserver_pids() -> set[int]:
    """The forkserver's and the resource tracker's pids (children of ours)."""
    from multiprocessing import forkserver, resource_tracker

    pids = {getattr(forkserver._forkserver, "_forkserver_pid", None),
            getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {p for p in pids if p}


class ChildPool:
    """``size`` children for one queue; ``await run(...)`` runs one job in one."""

    def __init__(
        self,
        queue: str,
        processor: str | Callable[..., Any],
        size: int,
        settings: SandboxSettings | None = None,
        *,
        ctx: Any = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings or SandboxSettings()
        if callable(processor):
            import cloudpickle

            self._processor: str | bytes = cloudpickle.dumps(processor)
            self._label = repr(processor)
            preload: list[str] = []
        else:
            self._processor = processor
            self._label = processor
            preload = [processor.partition(":")[0]]
        self.ctx = ctx or forkserver_context(preload)
        self.size = size
        self.defaults = dict(defaults or {})
        self.children: list[ChildHandle | None] = [None] * size
        self.slots: list[SlotState] = [SlotState.BOOTING] * size
        #: Jobs waiting for a child, first come first served.
        self._waiters: deque[tuple[asyncio.Future[ChildHandle], str]] = deque()
        self._alive_r, self._alive_w = mp.Pipe(duplex=False)
        self.boot_failures = 0
        #: Set when the processor keeps failing to boot: the queue stops claiming.
        self.failed: str | None = None
        self.closing = False
        #: Moving average of the time a job spends in a child (None: no job yet).
        self.avg_job_s: float | None = None
        #: Set by the worker's close: jobs still waiting for a child never start.
        self.draining = False
        self.started_children = 0
        #: CPU seconds of the children already gone (metrics: a counter never drops).
        self.retired_cpu_s = 0.0
        #: Told the bounded reason class of each child replaced (metrics).
        self.on_retire: Callable[[str], None] | None = None
        self.crashes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._guard: Supervised | None = None
        self._tree: Tree | None = None
        #: Called when a child booted (the worker may claim again).
        self.on_recovered: Callable[[], None] | None = None
        self._first_round = asyncio.Event()
        self._attempts_left = 0

    @property
    def waiting(self) -> int:
        """Jobs waiting for a child (prefetched, not dispatched yet)."""
        return len(self._waiters)

    # -- lifecycle ------------------------------------------------------------

    async def start(self, tree: Tree) -> None:
        """Boot every slot; returns once each slot booted or failed a first time
        (a broken processor must not hold up the supervisor's other queues).
        The memory guard runs under ``tree`` (restarted if it crashes)."""
        start_forkserver()
        self._attempts_left = self.size
        for slot in range(self.size):
            self._spawn(self._fill(slot), slot)
        await self._first_round.wait()
        self._tree = tree
        self._guard = tree.start(f"memory guard {self.queue}", self._watch, queue=self.queue)

    def healthy(self) -> bool:
        """Claim only with a live child to run the job (none while booting fails)."""
        return (self.failed is None and not self.closing
                and any(c is not None and not c.dead for c in self.children))

    def busy_count(self) -> int:
        return sum(1 for c in self.children if c is not None and c.state is ChildState.BUSY)

    def describe(self) -> list[dict[str, Any]]:
        """Each slot: its child's pid, state, job, RSS and CPU seconds (for the
        heartbeat, once a renew interval: the kernel's numbers, read then)."""
        out: list[dict[str, Any]] = []
        for slot, c in enumerate(self.children):
            if c is None:
                out.append({"slot": slot, "state": self.slots[slot].value})
            else:
                out.append({"slot": slot, "pid": c.pid, "state": c.state.value,
                            "job": c.job_id, "rss": c.rss() if not c.dead else 0,
                            "cpu_s": round(c.cpu_seconds(), 2) if not c.dead else 0})
        return out

    async def close(self) -> None:
        """Stop every child (busy ones are killed: the worker gave their jobs back)."""
        self.closing = True
        if self._guard is not None and self._tree is not None:
            await self._tree.stop(self._guard)
        for t in list(self._tasks):
            t.cancel()
        for fut, _job in self._waiters:
            if not fut.done():
                fut.cancel()
        await asyncio.gather(
            *(c.stop(self.settings.kill_grace_s) for c in self.children if c is not None),
            return_exceptions=True,
        )
        self._alive_w.close()
        self._alive_r.close()

    def replace_all(self) -> None:
        """SIGHUP: retire every idle child now and every busy one when its job
        ends; new ones take their slots."""
        self._generation += 1
        for c in list(self.children):
            if c is not None and c.state is ChildState.IDLE:
                self._retire(c, "config reload")

    # -- running jobs -----------------------------------------------------------

    def _child_free(self, child: ChildHandle) -> None:
        """``child`` is idle: give it to the first job waiting, if any."""
        while self._waiters:
            fut, job_id = self._waiters.popleft()
            if not fut.done():
                child.take(job_id)
                fut.set_result(child)
                return

    async def _acquire(self, job_id: str) -> ChildHandle:
        child = None
        for c in self.children:
            if c is not None and c.state is ChildState.IDLE:
                child = c
                break
        if child is not None and not self._waiters:
            child.take(job_id)
            return child
        fut: asyncio.Future[ChildHandle] = asyncio.get_running_loop().create_future()
        entry = (fut, job_id)
        self._waiters.append(entry)
        if child is not None:
            self._child_free(child)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                got = fut.result()
                got.release()  # taken for us, never used
                self._child_free(got)
            else:  # still waiting in line (a resolved one was popped)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def pids(self) -> dict[str, int]:
        """The child pid running each job (renewals record it: stall forensics)."""
        return {c.job_id: c.pid for c in self.children
                if c is not None and c.job_id is not None}

    def cancel(self, job_id: str, reason: str) -> bool:
        """Tell the child running ``job_id`` that it is cancelled."""
        return any(c is not None and c.cancel(job_id, reason) for c in self.children)

    async def run(
        self, job_id: str, job_frame: bytes, sink: Callable[[str, str], None],
        on_dispatch: Callable[[], None] | None = None, why: Callable[[], str] | None = None,
    ) -> str:
        """Run one job (its JOB frame) in a child; its result as JSON text.
        Raises ChildJobError (the processor raised), ChildCrashed (the child
        died); a cancel (timeout, lease lost, shutdown: ``why()`` says which)
        kills the child's whole tree."""
        child = await self._acquire(job_id)
        if self.draining:
            # Shutdown began while this job waited for a child: it never
            # starts; the worker gives it back untouched.
            child.release()
            self._child_free(child)
            raise NotDispatched(job_id)
        if on_dispatch is not None:
            on_dispatch()
        began = time.monotonic()
        try:
            result = await child.run(job_frame, job_id, sink)
            self._timed(began)
        except asyncio.CancelledError:
            self._retire(child, f"job {job_id} {why() if why else 'cancelled'}", kill=True)
            raise
        except ChildCrashed:
            self.crashes += 1
            self._retire(child, "crashed", kill=True)
            raise
        except ChildJobError:
            self._timed(began)
            self._release(child)
            raise
        self._release(child)
        return result

    def _timed(self, began: float) -> None:
        took = time.monotonic() - began
        avg = self.avg_job_s
        self.avg_job_s = took if avg is None else avg + 0.05 * (took - avg)

    def _release(self, child: ChildHandle) -> None:
        s = self.settings
        why = None
        if s.isolation == "per-job":
            why = "per-job isolation"
        elif s.max_jobs_per_child and child.jobs_done >= s.max_jobs_per_child:
            why = f"{child.jobs_done} jobs done"
        elif child.generation != self._generation:
            why = "config reload"
        elif s.memory_soft_bytes and child.rss() > s.memory_soft_bytes:
            why = f"memory {child.rss() >> 20} MiB over the soft limit"
        if why or self.closing:
            self._retire(child, why or "closing")
        elif child.state is ChildState.IDLE:
            self._child_free(child)

    def _retire(self, child: ChildHandle, why: str, *, kill: bool = False) -> None:
        """Stop a child in the background and boot its replacement."""
        self.retired_cpu_s += child.cpu_seconds()
        if self.on_retire is not None and not self.closing:
            self.on_retire(retire_reason(why))
        log.info("queue %s: child #%d (pid %s) recycled: %s", self.queue, child.slot,
                 child.pid, why)
        if self.children[child.slot] is child:
            self.children[child.slot] = None
            self.slots[child.slot] = SlotState.BOOTING

        async def go() -> None:
            await child.stop(0 if kill else self.settings.kill_grace_s, kill=kill)
            if not self.closing:
                await self._fill(child.slot)

        self._spawn(go(), child.slot)

    def _spawn(self, coro: Any, slot: int) -> None:
        """Run a boot or retire task; one that crashes (a bug) is logged and its
        slot filled again, so the pool never silently shrinks."""
        t = asyncio.create_task(coro, name=f"rqsup pool {self.queue}#{slot}")
        self._tasks.add(t)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None or self.closing:
                return
            log.error("queue %s: managing child slot #%d failed; booting it again", self.queue,
                      slot, exc_info=task.exception())
            if self.children[slot] is None:
                self._spawn(self._fill(slot), slot)

        t.add_done_callback(done)

    # -- booting ----------------------------------------------------------------

    def _spec(self, slot: int) -> ChildSpec:
        s = self.settings
        core = dict(s.rlimits).get("RLIMIT_CORE", 0)
        return ChildSpec(
            queue=self.queue, slot=slot, processor=self._processor, nice=s.nice, user=s.user,
            group=s.group, rlimits=dict(s.rlimits), env=dict(s.env), defaults=self.defaults,
            max_result_bytes=s.limits.max_result_bytes, max_log_line=s.limits.max_log_line,
            dumpable=core > 0,
        )

    async def _fill(self, slot: int) -> None:
        """Boot a child into ``slot``; boot failures back off, then mark failed."""
        while not self.closing:
            child = ChildHandle(self.queue, slot, self._generation, self.settings.limits)
            self.slots[slot] = SlotState.BOOTING
            began = time.monotonic()
            try:
                await child.boot(self.ctx, self._spec(slot), self._alive_r,
                                 self.settings.boot_timeout_s)
            except Exception as exc:
                self._attempted()
                self.boot_failures += 1
                delay = min(0.5 * 2 ** (self.boot_failures - 1), BOOT_BACKOFF_MAX_S)
                if self.boot_failures >= MAX_BOOT_FAILURES:
                    self.slots[slot] = SlotState.FATAL
                    if self.failed is None:
                        self.failed = str(exc)
                        log.error("queue %s: processor %s failed to boot %d times in a row; "
                                  "this queue stops claiming (other queues go on): %s",
                                  self.queue, self._label, self.boot_failures, exc)
                else:
                    self.slots[slot] = SlotState.BACKOFF
                    log.warning("queue %s: child #%d of processor %s failed to boot (%s); "
                                "retrying in %.1fs", self.queue, slot, self._label, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.boot_failures = 0
            if self.failed is not None:
                log.info("queue %s: processor boots again; claiming resumes", self.queue)
                self.failed = None
            self.started_children += 1
            log.debug("queue %s: child #%d pid %d booted in %.1f ms", self.queue, slot,
                      child.pid, (time.monotonic() - began) * 1000)
            self.children[slot] = child
            self.slots[slot] = SlotState.FILLED
            child.on_idle_death = lambda c: self._retire(c, "died while idle")
            self._child_free(child)
            self._attempted()
            if self.on_recovered is not None:
                self.on_recovered()
            return

    def _attempted(self) -> None:
        if self._attempts_left > 0:
            self._attempts_left -= 1
            if self._attempts_left == 0:
                self._first_round.set()

    # -- the guard: memory and idle time ----------------------------------------

    async def _watch(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(0.25)
            for child in list(self.children):
                if child is None:
                    continue
                if child.state is ChildState.BUSY:
                    if s.memory_hard_bytes:
                        rss = child.rss()
                        if rss > s.memory_hard_bytes:
                            child.memory_kill(
                                f"memory limit exceeded: {rss >> 20} MiB > hard limit "
                                f"{s.memory_hard_bytes >> 20} MiB"
                            )
                elif (child.state is ChildState.IDLE and s.idle_timeout_s
                      and time.monotonic() - child.last_used > s.idle_timeout_s):
                    self._retire(child, "idle too long")


__all__ = ["ChildCrashed", "ChildJobError", "ChildPool", "NotDispatched", "SandboxSettings",
           "SlotState"]

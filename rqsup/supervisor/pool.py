"""The child pool of one queue (process mode): pre-started, reused, supervised.

Children come from a multiprocessing forkserver: a clean process, started by
exec, that imported the processor modules once; it forks each child, so a
child starts in milliseconds and never inherits the supervisor's event loop,
sockets or threads. The pool boots children (handshake), hands them jobs,
reads their messages from the event loop (``add_reader``; no thread per
child), kills a child's whole process group on timeout, lease loss or a
memory breach, and replaces children that crash, get old or grow fat.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rqsup.sandbox.runtime import ChildSpec
from rqsup.supervisor.child_handle import Child, ChildCrashed, ChildJobError

if TYPE_CHECKING:
    from rqsup.supervisor.tree import Supervised, Tree

log = logging.getLogger("rqsup.pool")

#: Consecutive boot failures before the queue's processor is marked failed.
MAX_BOOT_FAILURES = 5
BOOT_BACKOFF_MAX_S = 30.0


class NotDispatched(Exception):
    """A job that waited for a child when shutdown began: it was not started."""


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


def forkserver_context(preload: list[str]) -> Any:
    """The process-wide forkserver, preloading the processor modules (through
    rqsup.sandbox.preload, which survives a module that fails to import).
    Preload is read when the forkserver starts: the first pool's list wins."""
    ctx = mp.get_context("forkserver")
    known = [m for m in os.environ.get("RQSUP_PRELOAD", "").split(",") if m]
    os.environ["RQSUP_PRELOAD"] = ",".join(dict.fromkeys([*known, *preload]))
    ctx.set_forkserver_preload(["rqsup.sandbox.runtime", "rqsup.sandbox.preload"])
    return ctx


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
        self.children: list[Child | None] = [None] * size
        self.idle: asyncio.Queue[Child] = asyncio.Queue()
        self._alive_r, self._alive_w = mp.Pipe(duplex=False)
        self.boot_failures = 0
        #: Set when the processor keeps failing to boot: the queue stops claiming.
        self.failed: str | None = None
        self.closing = False
        #: Jobs waiting for a child (prefetched, not dispatched yet).
        self.waiting = 0
        #: Moving average of the time a job spends in a child (None: no job yet).
        self.avg_job_s: float | None = None
        #: Set by the worker's close: jobs still waiting for a child never start.
        self.draining = False
        self.started_children = 0
        self.crashes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._generation = 0
        self._guard: Supervised | None = None
        self._tree: Tree | None = None
        #: Called when a child booted (the worker may claim again).
        self.on_recovered: Callable[[], None] | None = None
        self._first_round = asyncio.Event()
        self._attempts_left = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self, tree: Tree) -> None:
        """Boot every slot; returns once each slot booted or failed a first time
        (a broken processor must not hold up the supervisor's other queues).
        The memory guard runs under ``tree`` (restarted if it crashes)."""
        self._attempts_left = self.size
        for slot in range(self.size):
            self._spawn(self._fill(slot), slot)
        await self._first_round.wait()
        self._tree = tree
        self._guard = tree.start(f"memory guard {self.queue}", self._watch, queue=self.queue)

    def healthy(self) -> bool:
        """Claim only with a live child to run the job (none while booting fails)."""
        return (self.failed is None and not self.closing
                and any(c is not None for c in self.children))

    def busy_count(self) -> int:
        return sum(1 for c in self.children if c is not None and c.job_id is not None)

    async def close(self) -> None:
        """Stop every child (busy ones are killed: the worker gave their jobs back)."""
        self.closing = True
        if self._guard is not None and self._tree is not None:
            await self._tree.stop(self._guard)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(
            *(c.stop(self.settings.kill_grace_s) for c in self.children if c is not None),
            return_exceptions=True,
        )
        self._alive_w.close()
        self._alive_r.close()

    def replace_all(self) -> None:
        """SIGHUP: retire every child once it is idle; new ones take their slots."""
        self._generation += 1
        while not self.idle.empty():
            child = self.idle.get_nowait()
            self._retire(child, "config reload")

    # -- running jobs -----------------------------------------------------------

    async def run(
        self, job_id: str, name: str, data_text: str, attempts_made: int,
        sink: Callable[[str, str], None], on_dispatch: Callable[[], None] | None = None,
        flow: str | None = None, why: Callable[[], str] | None = None,
    ) -> str:
        """Run one job in a child; its result as JSON text. Raises ChildJobError
        (the processor raised), ChildCrashed (the child died); a cancel (timeout,
        lease lost, shutdown: ``why()`` says which) kills the child's process
        group."""
        self.waiting += 1
        try:
            child = await self.idle.get()
            while child.dead:  # died while idle; its replacement is on the way
                child = await self.idle.get()
        finally:
            self.waiting -= 1
        if self.draining:
            # Shutdown began while this job waited for a child: it never
            # starts; the worker gives it back untouched.
            self.idle.put_nowait(child)
            raise NotDispatched(job_id)
        if on_dispatch is not None:
            on_dispatch()
        began = time.monotonic()
        try:
            result = await child.run(job_id, name, data_text, attempts_made, sink, flow)
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

    def _release(self, child: Child) -> None:
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
        else:
            self.idle.put_nowait(child)

    def _retire(self, child: Child, why: str, *, kill: bool = False) -> None:
        """Stop a child in the background and boot its replacement."""
        log.info("queue %s: child #%d (pid %s) recycled: %s", self.queue, child.slot,
                 child.pid, why)
        if self.children[child.slot] is child:
            self.children[child.slot] = None

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

    async def _fill(self, slot: int) -> None:
        """Boot a child into ``slot``; boot failures back off, then mark failed."""
        while not self.closing:
            child = Child(self.queue, slot, self._generation)
            spec = ChildSpec(
                queue=self.queue, slot=slot, processor=self._processor,
                nice=self.settings.nice, user=self.settings.user, group=self.settings.group,
                rlimits=dict(self.settings.rlimits),
            )
            began = time.monotonic()
            try:
                await child.boot(self.ctx, spec, self._alive_r, self.settings.boot_timeout_s)
            except Exception as exc:
                self._attempted()
                self.boot_failures += 1
                delay = min(0.5 * 2 ** (self.boot_failures - 1), BOOT_BACKOFF_MAX_S)
                if self.boot_failures >= MAX_BOOT_FAILURES and self.failed is None:
                    self.failed = str(exc)
                    log.error("queue %s: processor %s failed to boot %d times in a row; "
                              "this queue stops claiming (other queues go on): %s", self.queue,
                              self._label, self.boot_failures, exc)
                else:
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
            child.on_idle_death = lambda c: self._take_idle(c, "died while idle")
            self.idle.put_nowait(child)
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
                if child is None or child.stopping:
                    continue
                if child.job_id is not None:
                    if s.memory_hard_bytes:
                        rss = child.rss()
                        if rss > s.memory_hard_bytes:
                            child.memory_kill(
                                f"memory limit exceeded: {rss >> 20} MiB > hard limit "
                                f"{s.memory_hard_bytes >> 20} MiB"
                            )
                elif s.idle_timeout_s and time.monotonic() - child.last_used > s.idle_timeout_s:
                    self._take_idle(child, "idle too long")

    def _take_idle(self, child: Child, why: str) -> None:
        kept: list[Child] = []
        found = False
        while not self.idle.empty():
            c = self.idle.get_nowait()
            if c is child:
                found = True
            else:
                kept.append(c)
        for c in kept:
            self.idle.put_nowait(c)
        if found:
            self._retire(child, why)


__all__ = ["ChildCrashed", "ChildJobError", "ChildPool", "NotDispatched", "SandboxSettings"]

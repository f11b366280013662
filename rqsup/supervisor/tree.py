"""The supervision tree: the supervisor's own long-running tasks, supervised.

Every task that should live as long as the process (a queue's worker, the
lease renewer, the stall sweepers, the scheduler loop, the memory guards,
health and status) is registered here with a name, the queue it serves (if
any) and what to give back when it dies. When one ends with an unexpected
exception the tree logs it once at ERROR with its traceback, runs its
give-back (a dead worker's jobs go back to the queue at once), and starts
it again after a backoff of 0.1 s doubling to 30 s. A task that crashes
``fail_after`` times in a row without a stable run marks its queue failed
(or, for a task serving no queue, the supervisor degraded) until it has
run ``stable_s`` without crashing: health reports it everywhere.

Tasks are restarted from a factory, never resumed: each run gets fresh
state, so whatever broke the last run is not carried into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("rqsup.supervisor")

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 30.0
#: Crashes in a row (no stable run between) that mark a queue failed.
FAIL_AFTER = 5
#: A run this long counts as stable: the crash count starts again.
STABLE_S = 30.0

GiveBack = Callable[[BaseException], Awaitable[None]]


class TaskState(enum.Enum):
    RUNNING = "running"
    BACKOFF = "backoff"  # crashed; waiting to be started again
    STOPPED = "stopped"


@dataclass(eq=False)
class Supervised:
    """One supervised task and its history."""

    name: str
    factory: Callable[[], Awaitable[None]]
    queue: str | None
    give_back: GiveBack | None
    state: TaskState = TaskState.RUNNING
    restarts: int = 0
    #: Crashes since the last stable run.
    in_a_row: int = 0
    started_at: float = field(default_factory=time.monotonic)
    last_error: str = ""
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    #: Set to cut a backoff short (the task is being retired).
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


class Tree:
    """Runs supervised tasks; see the module docstring."""

    def __init__(self, *, first_backoff_s: float = FIRST_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, fail_after: int = FAIL_AFTER,
                 stable_s: float = STABLE_S,
                 on_restart: Callable[[Supervised], None] | None = None) -> None:
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.fail_after = fail_after
        self.stable_s = stable_s
        self.on_restart = on_restart
        #: Every supervised task; names need not be unique (a queue reloaded
        #: has an old and a new worker for a while).
        self.tasks: list[Supervised] = []

    # -- registering and stopping -------------------------------------------------

    def start(self, name: str, factory: Callable[[], Awaitable[None]], *,
              queue: str | None = None, give_back: GiveBack | None = None) -> Supervised:
        """Run ``factory()`` now, and again whenever it crashes."""
        entry = Supervised(name, factory, queue, give_back)
        self.tasks.append(entry)
        entry.task = asyncio.create_task(self._keep(entry), name=f"rqsup {name}")
        entry.task.add_done_callback(lambda _t: self._ended(entry))
        return entry

    def _ended(self, entry: Supervised) -> None:
        entry.state = TaskState.STOPPED
        if entry in self.tasks:
            self.tasks.remove(entry)

    @staticmethod
    def retire(entry: Supervised) -> None:
        """The task is being stopped on purpose: when it returns, it is done
        (not restarted); a crash is still logged and given back."""
        entry.stopping = True
        entry.wakeup.set()

    @staticmethod
    async def wait(entry: Supervised, timeout: float | None = None) -> bool:
        """Wait for a retired task to end; False if it did not in time."""
        if entry.task is None:
            return True
        done, _ = await asyncio.wait([entry.task], timeout=timeout)
        return bool(done)

    async def stop(self, entry: Supervised, timeout: float = 2.0) -> None:
        """Cancel a task (one that holds nothing worth a graceful stop)."""
        self.retire(entry)
        if entry.task is not None:
            entry.task.cancel()
            await asyncio.wait([entry.task], timeout=timeout)

    async def stop_all(self, timeout: float = 2.0) -> None:
        for entry in list(self.tasks):
            await self.stop(entry, timeout)

    # -- the loop of one task -------------------------------------------------------

    async def _keep(self, e: Supervised) -> None:
        while True:
            e.state = TaskState.RUNNING
            e.started_at = time.monotonic()
            try:
                await e.factory()
            except asyncio.CancelledError:
                e.state = TaskState.STOPPED
                raise
            except Exception as exc:
                crash: BaseException = exc
            else:
                if e.stopping:
                    e.state = TaskState.STOPPED
                    return
                crash = RuntimeError("returned, but should run until stopped")
            if time.monotonic() - e.started_at >= self.stable_s:
                e.in_a_row = 0
            e.in_a_row += 1
            e.restarts += 1
            e.last_error = f"{type(crash).__name__}: {crash}"
            extra = {"task": e.name, "queue": e.queue}
            log.error("task %s crashed (%d in a row, %d in all): %s", e.name, e.in_a_row,
                      e.restarts, e.last_error, exc_info=crash, extra=extra)
            if e.give_back is not None:
                try:
                    await e.give_back(crash)
                except asyncio.CancelledError:
                    e.state = TaskState.STOPPED
                    raise
                except Exception:
                    log.exception("task %s: giving back what it held failed", e.name,
                                  extra=extra)
            if e.stopping:
                e.state = TaskState.STOPPED
                return
            if e.in_a_row == self.fail_after:
                what = f"queue {e.queue} is failed" if e.queue else "the supervisor is degraded"
                log.error("task %s keeps crashing (%d times in a row): %s until it runs for "
                          "%.0fs without crashing (retrying every %.0fs at most)", e.name,
                          e.in_a_row, what, self.stable_s, self.max_backoff_s)
            if self.on_restart is not None:
                with contextlib.suppress(Exception):
                    self.on_restart(e)
            e.state = TaskState.BACKOFF
            delay = min(self.first_backoff_s * 2 ** (e.in_a_row - 1), self.max_backoff_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(e.wakeup.wait(), delay)
            if e.stopping:  # retired during the backoff
                return  # type: ignore[unreachable]

    # -- health -------------------------------------------------------------------

    def crash_looping(self, e: Supervised) -> bool:
        if e.in_a_row < self.fail_after:
            return False
        if e.state is TaskState.RUNNING and time.monotonic() - e.started_at >= self.stable_s:
            log.info("task %s runs again without crashing", e.name)
            e.in_a_row = 0
            return False
        return True

    def failed_queues(self) -> dict[str, str]:
        """Queues with a task in a crash loop, and its last error."""
        return {e.queue: f"task {e.name}: {e.last_error}" for e in list(self.tasks)
                if e.queue is not None and self.crash_looping(e)}

    def degraded(self) -> dict[str, str]:
        """Tasks that serve no one queue (the renewer, health ...) in a crash loop."""
        return {e.name: e.last_error for e in list(self.tasks)
                if e.queue is None and self.crash_looping(e)}

    def restarts(self) -> dict[str, int]:
        """Restarts so far by task name (tasks that ended are not counted)."""
        out: dict[str, int] = {}
        for e in self.tasks:
            if e.restarts:
                out[e.name] = out.get(e.name, 0) + e.restarts
        return out

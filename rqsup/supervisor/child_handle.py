"""The supervisor's side of one sandboxed child: boot, run a job, stop.

A child is untrusted (it runs user code; the supervisor holds the Redis
credentials). Everything it sends is a frame of :mod:`rqsup.sandbox.protocol`
read as data; a frame that does not parse, is too large or comes out of turn
kills the child and fails its job with a protocol error. Its state is one
:class:`ChildState`, changed only by :meth:`ChildHandle._to`. Its death is
seen from its exit (a pidfd), not only from its pipe (a daemonized
grandchild may hold that open). Its stdout and stderr are logged with caps.
Messages are read from the event loop with ``add_reader`` (no thread per
child).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any

import psutil

from rqsup.sandbox.launch import ChildProcess
from rqsup.sandbox.protocol import (
    FrameReader,
    Kind,
    ProtocolError,
    check_error,
    decode,
    dumps,
    frame,
)
from rqsup.sandbox.runtime import ChildSpec, child_main
from rqsup.supervisor.child_errors import (
    ChildCrashed,
    ChildJobError,
    ChildProtocolError,
    MemoryLimitExceeded,
    describe_exit,
)
from rqsup.supervisor.child_output import ChildLimits, ChildOutput

log = logging.getLogger("rqsup.pool")


class ChildState(enum.Enum):
    SPAWNING = "spawning"  # started, boot handshake not done
    IDLE = "idle"          # booted, no job
    BUSY = "busy"          # running a job
    STOPPING = "stopping"  # asked to stop, or being killed
    EXITED = "exited"      # gone (reaped or about to be)


#: The transitions allowed, by member name (a plain attribute: an Enum's
#: ``value`` and ``hash`` run Python code, and this is on every job's path).
_NEXT: dict[str, frozenset[str]] = {
    "SPAWNING": frozenset({"IDLE", "STOPPING", "EXITED"}),
    "IDLE": frozenset({"BUSY", "STOPPING", "EXITED"}),
    "BUSY": frozenset({"IDLE", "STOPPING", "EXITED"}),
    "STOPPING": frozenset({"EXITED"}),
    "EXITED": frozenset(),
}


class ChildHandle:
    def __init__(self, queue: str, slot: int, generation: int,
                 limits: ChildLimits | None = None) -> None:
        self.queue = queue
        self.slot = slot
        self.generation = generation
        self.limits = limits or ChildLimits()
        self.state = ChildState.SPAWNING
        self.proc: Any = None
        self.conn: Connection | None = None
        self.out: Connection | None = None
        self.control: Connection | None = None
        self.pid = 0
        self.job_id: str | None = None
        self.jobs_done = 0
        self.last_used = time.monotonic()
        self._reply: asyncio.Future[tuple[Kind, Any]] | None = None
        self._sink: Callable[[str, str], None] | None = None
        self._kill_reason: str | None = None
        self._reader = FrameReader(max(self.limits.max_result_bytes + 1024, 1 << 20))
        self.output: ChildOutput | None = None
        self._pidfd: int | None = None
        self._ps: psutil.Process | None = None
        self._status_lock = threading.Lock()
        #: Called when the child dies while idle (the pool replaces it).
        self.on_idle_death: Callable[[ChildHandle], None] | None = None

    def __repr__(self) -> str:
        return f"ChildHandle({self.queue}#{self.slot}, pid={self.pid}, {self.state.value})"

    @property
    def dead(self) -> bool:
        return self.state is ChildState.EXITED

    def _to(self, new: ChildState, why: str = "") -> None:
        """The one place a child's state changes."""
        if new is self.state:
            return
        if new._name_ not in _NEXT[self.state._name_]:
            log.error("queue %s: child #%d pid %s: no transition %s -> %s (%s)", self.queue,
                      self.slot, self.pid, self.state.value, new.value, why)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("queue %s: child #%d pid %s: %s -> %s (%s)", self.queue, self.slot,
                      self.pid, self.state.value, new.value, why)
        self.state = new

    # -- boot -----------------------------------------------------------------

    async def boot(self, ctx: Any, spec: ChildSpec, alive_r: Connection,
                   timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        parent, child_end = ctx.Pipe(duplex=True)
        out_r, out_w = ctx.Pipe(duplex=False)
        ctl_r, ctl_w = ctx.Pipe(duplex=False)  # CANCEL frames, read by a thread there
        proc = ChildProcess(target=child_main, args=(spec, child_end, out_w, alive_r, ctl_r),
                            name=f"rqsup-child-{spec.queue}-{spec.slot}", daemon=False)
        # Starting talks to the forkserver (a few ms): keep it off the loop.
        await loop.run_in_executor(None, self._start, proc)
        child_end.close()
        out_w.close()
        ctl_r.close()
        os.set_blocking(ctl_w.fileno(), False)
        self.control = ctl_w
        assert proc.pid is not None
        self.proc, self.conn, self.out, self.pid = proc, parent, out_r, proc.pid
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(self._pidfd, self._on_exit, "its process exited")
        os.set_blocking(out_r.fileno(), False)
        os.set_blocking(parent.fileno(), False)
        self.output = ChildOutput(self.queue, self.slot, out_r.fileno(), self.limits,
                                  lambda: self.job_id)
        loop.add_reader(out_r.fileno(), self.output.on_readable)
        self._reply = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_readable)
        try:
            async with asyncio.timeout(timeout_s):
                kind, value = await self._reply
        except TimeoutError:
            await self.stop(0, kill=True)
            raise RuntimeError(f"child did not boot within {timeout_s:g}s") from None
        except ChildCrashed as exc:
            await self.stop(0, kill=True)
            raise RuntimeError(f"child died while booting: {exc}") from None
        if kind is Kind.BOOT_ERROR:
            await self.stop(0, kill=True)
            raise RuntimeError(f"{value['type']}: {value['message']}")
        self._to(ChildState.IDLE, "booted")

    # -- jobs -----------------------------------------------------------------

    def take(self, job_id: str) -> None:
        """An idle child is given a job (BUSY from here: nobody else takes it)."""
        self.job_id = job_id
        self._to(ChildState.BUSY, "a job")

    def release(self) -> None:
        """A job taken but never sent (its wait was cancelled): idle again."""
        if self.state is ChildState.BUSY and self._sink is None:
            self.job_id = None
            self._to(ChildState.IDLE, "job not sent")

    async def run(self, job_frame: bytes, job_id: str, sink: Callable[[str, str], None]) -> str:
        """Run the job this child was given (:meth:`take`), from its JOB frame;
        its result as JSON text. Raises ChildJobError (the processor raised)
        or ChildCrashed (the child died, or broke the protocol)."""
        assert self.conn is not None
        if self.state is not ChildState.BUSY or self.job_id != job_id:
            raise ChildCrashed(f"child is {self.state.value}, not given job {job_id}")
        self._reply = asyncio.get_running_loop().create_future()
        self._sink = sink
        self._kill_reason = None
        if self.output is not None:
            self.output.job_started()
        try:
            self._write(job_frame)
            kind, value = await self._reply
        except (BrokenPipeError, ConnectionResetError):
            raise ChildCrashed(await self._exit_reason()) from None
        finally:
            self._job_ended(job_id)
        self.jobs_done += 1
        if kind is Kind.RESULT:
            return str(value)
        raise ChildJobError(value)

    def _job_ended(self, job_id: str) -> None:
        if self.output is not None:
            self.output.job_ended(job_id)
        self.job_id = None
        self._sink = None
        self.last_used = time.monotonic()
        if self.state is ChildState.BUSY:
            self._to(ChildState.IDLE, "job done")

    def _write(self, data: bytes) -> None:
        """A frame to the child; the pipe is non-blocking, so a child that does
        not read cannot stall the loop: it is killed instead."""
        assert self.conn is not None
        view = memoryview(data)
        deadline = time.monotonic() + 2.0
        while view:
            try:
                view = view[os.write(self.conn.fileno(), view):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._violation("it does not read its pipe")
                    raise ChildCrashed("child does not read its pipe") from None
                time.sleep(0.001)

    def cancel(self, job_id: str, reason: str) -> bool:
        """Tell the processor its job is cancelled (a CANCEL frame on the
        control pipe; its job.cancelled is set). False if the child does not
        run that job, or its control pipe is full (it reads nothing there:
        the grace and the kill still apply)."""
        if self.state is not ChildState.BUSY or self.job_id != job_id or self.control is None:
            return False
        try:
            os.write(self.control.fileno(), frame(Kind.CANCEL, dumps([job_id, reason])))
        except (BlockingIOError, BrokenPipeError, OSError):
            return False
        return True

    def memory_kill(self, reason: str) -> None:
        """Hard memory limit: kill now; the running job fails with ``reason``."""
        self._kill_reason = reason
        self.kill_tree()

    # -- reading --------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self.conn is not None
        size = max(1 << 16, min(self._reader.want, 1 << 20)) if self._reader.buffered else 1 << 16
        try:
            chunk = os.read(self.conn.fileno(), size)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._on_exit("it closed its pipe")
            return
        try:
            frames = self._reader.feed(chunk)
        except ProtocolError as exc:
            self._violation(str(exc))
            return
        for kind, body in frames:
            try:
                self._handle(kind, body)
            except ProtocolError as exc:
                self._violation(str(exc))
                return

    def _handle(self, kind: Kind, body: bytes) -> None:
        """One frame from the child, in the state it came in."""
        state = self.state
        if state is ChildState.STOPPING or state is ChildState.EXITED:
            return
        if kind is Kind.READY or kind is Kind.BOOT_ERROR:
            if state is not ChildState.SPAWNING:
                raise ProtocolError(f"a {kind.name} frame while {state.value}")
            value = decode(kind, body)
            if kind is Kind.BOOT_ERROR:
                value = check_error(value)
            self._resolve(kind, value)
            return
        if state is not ChildState.BUSY:
            raise ProtocolError(f"a {kind.name} frame while {state.value}")
        if kind is Kind.RESULT:  # the usual frame first
            decode(kind, body)  # valid JSON, or a protocol error; stored as sent
            self._resolve(kind, body.decode())
        elif kind is Kind.PROGRESS or kind is Kind.CHILDREN:
            decode(kind, body)  # JSON, or a protocol error
            if self._sink is not None:
                self._sink("progress" if kind is Kind.PROGRESS else "children", body.decode())
        elif kind is Kind.LOG:
            line = decode(kind, body)
            if len(line) > self.limits.max_log_line:
                line = line[:self.limits.max_log_line] + f"... [cut: {len(line)} characters]"
            if self._sink is not None:
                self._sink("log", line)
        elif kind is Kind.ERROR:
            self._resolve(kind, check_error(decode(kind, body)))
        else:
            raise ProtocolError(f"a {kind.name} frame from a child")

    def _resolve(self, kind: Kind, value: Any) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_result((kind, value))

    def _violation(self, reason: str) -> None:
        """The child broke the protocol: it is killed; its job fails saying why."""
        log.error("queue %s: child #%d (pid %d) broke the protocol: %s; killing it", self.queue,
                  self.slot, self.pid, reason)
        self.kill_tree()
        self._stop_reading()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(
                ChildProtocolError(f"protocol error: the child sent {reason}"))
        self._to(ChildState.STOPPING, "protocol error")

    def _stop_reading(self) -> None:
        with contextlib.suppress(Exception):
            loop = asyncio.get_running_loop()
            if self.conn is not None:
                loop.remove_reader(self.conn.fileno())

    def _on_exit(self, how: str) -> None:
        """The child is gone (its process exited, or its pipe closed)."""
        if self.state is ChildState.EXITED:
            return
        loop = asyncio.get_running_loop()
        was = self.state
        self._stop_reading()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._pidfd)
        if how == "it closed its pipe" and self.pid:
            self.kill_tree()  # half-dead: pipe closed, process maybe alive
        self._to(ChildState.EXITED, how)
        if was is ChildState.IDLE and self.on_idle_death is not None:
            self.on_idle_death(self)
        if self._reply is not None and not self._reply.done():
            fut = self._reply

            async def fail() -> None:
                reason = await self._exit_reason()
                if not fut.done():
                    cls = MemoryLimitExceeded if self._kill_reason else ChildCrashed
                    fut.set_exception(cls(reason))

            task = loop.create_task(fail())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _exit_reason(self) -> str:
        """The exit code or signal; waits briefly for the process to be reaped."""
        code = None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            code = self._exitcode()
            if code is not None:
                break
            await asyncio.sleep(0.005)
        if code is None:
            self.kill_tree()
            code = await loop.run_in_executor(None, self._join, 2.0)
        reason = describe_exit(code)
        if self._kill_reason:
            reason = f"{self._kill_reason} ({reason})"
        return reason

    # The exit status comes from the forkserver through the process's sentinel
    # pipe, and only once: two readers at a time (a join in a worker thread and
    # an exitcode check on the loop) make one of them see EOF and report 255.
    # So every read goes through this lock, and the loop never waits for it.

    @staticmethod
    def _start(proc: Any) -> None:
        proc.start()
        # multiprocessing polls every Process it started from the next
        # start(), in whatever thread that runs: not ours to poll.
        mp_process._children.discard(proc)  # type: ignore[attr-defined]

    def _exitcode(self) -> int | None:
        if not self._status_lock.acquire(blocking=False):
            return None  # a join holds it; ask again shortly
        try:
            code: int | None = self.proc.exitcode
            return code
        finally:
            self._status_lock.release()

    def _join(self, timeout: float) -> int | None:
        with self._status_lock:
            self.proc.join(timeout)
            code: int | None = self.proc.exitcode
            return code

    # -- stopping -------------------------------------------------------------

    def rss(self) -> int:
        """Resident memory of the child and its descendants (bytes)."""
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            total = int(self._ps.memory_info().rss)
            for p in self._ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += int(p.memory_info().rss)
            return total
        except psutil.Error:
            return 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the child so far; 0 once it is gone."""
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            t = self._ps.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except psutil.Error:
            return 0.0

    def kill_tree(self) -> None:
        """SIGKILL the child and every descendant: its process group, and any
        process that left the group (setsid, a double fork) but is still its
        descendant, since a child is a subreaper. After the child is reaped
        its pid may belong to someone else: then nothing is signalled."""
        if not self.pid or self._exitcode() is not None:
            return
        own = os.getpgid(0)
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for p in found:
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                pgid = os.getpgid(p.pid)
                if pgid not in (own, self.pid):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if not self.pid or self._exitcode() is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    async def stop(self, grace_s: float, *, kill: bool = False) -> None:
        """Ask the child to exit (or SIGTERM its group), SIGKILL after the grace;
        every descendant goes with it."""
        if self.state is not ChildState.EXITED:
            self._to(ChildState.STOPPING, "stopping")
        if self.proc is None:
            return
        loop = asyncio.get_running_loop()
        if kill:
            self.kill_tree()
        else:
            with contextlib.suppress(Exception):
                self._write(frame(Kind.STOP))
        code = await loop.run_in_executor(None, self._join, grace_s if not kill else 2.0)
        if code is None:
            self._signal(signal.SIGTERM)
            code = await loop.run_in_executor(None, self._join, max(grace_s, 0.5))
            if code is None:
                self.kill_tree()
                await loop.run_in_executor(None, self._join, 2.0)
        self._stop_reading()
        for fd in (self._pidfd,):
            if fd is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pidfd = None
        for c in (self.conn, self.out):
            if c is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(c.fileno())
                with contextlib.suppress(Exception):
                    c.close()
        if self.control is not None:
            with contextlib.suppress(Exception):
                self.control.close()
        self._to(ChildState.EXITED, f"stopped ({describe_exit(code)})")


__all__ = ["ChildCrashed", "ChildHandle", "ChildJobError", "ChildLimits", "ChildProtocolError",
           "ChildState", "MemoryLimitExceeded"]

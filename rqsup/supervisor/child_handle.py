"""One sandboxed child, seen from the supervisor: boot, run a job, stop.

Messages are read from the event loop with ``add_reader`` (no thread per
child). A child's death shows up at once as EOF on its pipe; its exit code
or signal goes into the job's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any

import psutil

from rqsup.sandbox.launch import ChildProcess
from rqsup.sandbox.runtime import ChildSpec, child_main

log = logging.getLogger("rqsup.pool")
_HEADER = struct.Struct("!i")
_BIG = struct.Struct("!Q")
out_log = logging.getLogger("rqsup.child")


class ChildCrashed(Exception):
    """The child died while running the job (its reason names the exit code or signal)."""


class MemoryLimitExceeded(ChildCrashed):
    """The child's process tree went over the hard memory limit; it was killed."""


class ChildJobError(Exception):
    """The processor raised in the child; ``info`` is the error as the child saw it."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("message", ""))
        self.info = info


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "child exited (status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"child killed by {name}"
    return f"child exited with code {code}"


class Child:
    def __init__(self, queue: str, slot: int, generation: int) -> None:
        self.queue = queue
        self.slot = slot
        self.generation = generation
        self.proc: Any = None
        self.conn: Connection | None = None
        self.out: Connection | None = None
        self.pid = 0
        self.job_id: str | None = None
        self.jobs_done = 0
        self.last_used = time.monotonic()
        self.stopping = False
        self._reply: asyncio.Future[tuple[Any, ...]] | None = None
        self._sink: Callable[[str, str], None] | None = None
        self._kill_reason: str | None = None
        self._partial = b""
        self._inbuf = b""
        self._ps: psutil.Process | None = None
        self._status_lock = threading.Lock()
        #: The pipe hit EOF: the child is gone (or going).
        self.dead = False
        #: Called when the child dies while idle (the pool replaces it).
        self.on_idle_death: Callable[[Child], None] | None = None

    def __repr__(self) -> str:
        return f"Child({self.queue}#{self.slot}, pid={self.pid})"

    # -- boot -----------------------------------------------------------------

    async def boot(self, ctx: Any, spec: ChildSpec, alive_r: Connection, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        parent, child_end = ctx.Pipe(duplex=True)
        out_r, out_w = ctx.Pipe(duplex=False)
        proc = ChildProcess(target=child_main, args=(spec, child_end, out_w, alive_r),
                            name=f"rqsup-child-{spec.queue}-{spec.slot}", daemon=False)
        # Starting talks to the forkserver (a few ms): keep it off the loop.
        await loop.run_in_executor(None, self._start, proc)
        child_end.close()
        out_w.close()
        assert proc.pid is not None
        self.proc, self.conn, self.out, self.pid = proc, parent, out_r, proc.pid
        os.set_blocking(out_r.fileno(), False)
        loop.add_reader(out_r.fileno(), self._on_output)
        self._reply = loop.create_future()
        # Blocking fd: sends stay simple; a read after readiness never blocks.
        loop.add_reader(parent.fileno(), self._on_message)
        try:
            async with asyncio.timeout(timeout_s):
                msg = await self._reply
        except TimeoutError:
            await self.stop(0, kill=True)
            raise RuntimeError(f"child did not boot within {timeout_s:g}s") from None
        except ChildCrashed as exc:
            await self.stop(0, kill=True)
            raise RuntimeError(f"child died while booting: {exc}") from None
        if msg[0] != "ready":
            await self.stop(0, kill=True)
            info = msg[1]
            raise RuntimeError(f"{info['type']}: {info['message']}")

    # -- jobs -----------------------------------------------------------------

    async def run(
        self, job_id: str, name: str, data_text: str, attempts_made: int,
        sink: Callable[[str, str], None], flow: str | None = None,
    ) -> str:
        assert self.conn is not None
        self._reply = asyncio.get_running_loop().create_future()
        self._sink = sink
        self.job_id = job_id
        self._kill_reason = None
        try:
            # Connection's framing, in one write (conn.send costs twice as much).
            payload = pickle.dumps(("job", job_id, name, data_text, attempts_made, flow), 5)
            if len(payload) < 1 << 16:
                _write_all(self.conn.fileno(), _HEADER.pack(len(payload)) + payload)
            else:
                self.conn.send_bytes(payload)
            msg = await self._reply
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise ChildCrashed(await self._exit_reason()) from None
        finally:
            self.job_id = None
            self._sink = None
            self.last_used = time.monotonic()
        self.jobs_done += 1
        if msg[0] == "done":
            return str(msg[1])
        raise ChildJobError(msg[1])

    def memory_kill(self, reason: str) -> None:
        """Hard memory limit: kill now; the running job fails with ``reason``."""
        self._kill_reason = reason
        self._kill_group(signal.SIGKILL)

    # -- reading --------------------------------------------------------------

    def _on_message(self) -> None:
        """Read what the pipe holds and decode every whole frame in it.

        The frames are multiprocessing.Connection's (a 4-byte big-endian
        length, then a pickle); reading them ourselves takes one read per
        wake-up instead of a poll and two reads per message.
        """
        assert self.conn is not None
        try:
            chunk = os.read(self.conn.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._on_eof()
            return
        buf = self._inbuf + chunk if self._inbuf else chunk
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if n == -1:  # a frame over 2 GiB: 8 more bytes of length
                if end - pos < 12:
                    break
                (n,) = _BIG.unpack_from(buf, pos + 4)
                start = pos + 12
            else:
                start = pos + 4
            if end - start < n:
                break
            msg = pickle.loads(buf[start:start + n])
            pos = start + n
            kind = msg[0]
            if kind == "progress" or kind == "log" or kind == "children":
                if self._sink is not None:
                    self._sink(kind, msg[1])
            elif self._reply is not None and not self._reply.done():
                self._reply.set_result(msg)
        self._inbuf = buf[pos:]

    def _on_eof(self) -> None:
        loop = asyncio.get_running_loop()
        self.dead = True
        if self.conn is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self.conn.fileno())
        if self.job_id is None and not self.stopping and self.on_idle_death is not None:
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
            self._kill_group(signal.SIGKILL)  # half-dead: pipe closed, process alive
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

    def _on_output(self) -> None:
        assert self.out is not None
        try:
            chunk = os.read(self.out.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.out.fileno())
            if self._partial:
                self._log_line(self._partial)
                self._partial = b""
            return
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._log_line(line)
        if len(self._partial) > 65536:
            self._log_line(self._partial)
            self._partial = b""

    def _log_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        job = f" job {self.job_id}" if self.job_id else ""
        out_log.info("child %s#%d%s: %s", self.queue, self.slot, job, text)

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

    def _kill_group(self, sig: int, *, fallback: bool = True) -> None:
        """The child made its own group (pgid = pid) at boot; before that, only
        the child itself can be signalled. No fallback once it was reaped: its
        pid may belong to someone else by then."""
        if not self.pid:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            if fallback:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
        except PermissionError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    async def stop(self, grace_s: float, *, kill: bool = False) -> None:
        """Ask the child to exit (or SIGTERM its group), SIGKILL after the grace."""
        self.stopping = True
        if self.proc is None:
            return
        loop = asyncio.get_running_loop()
        if kill:
            self._kill_group(signal.SIGKILL)
        else:
            with contextlib.suppress(Exception):
                if self.conn is not None:
                    self.conn.send(("stop",))
        code = await loop.run_in_executor(None, self._join, grace_s if not kill else 2.0)
        if code is None:
            self._kill_group(signal.SIGTERM)
            code = await loop.run_in_executor(None, self._join, max(grace_s, 0.5))
            if code is None:
                self._kill_group(signal.SIGKILL)
                await loop.run_in_executor(None, self._join, 2.0)
        # Grandchildren that outlived their parent still hold the group.
        self._kill_group(signal.SIGKILL, fallback=False)
        for c in (self.conn, self.out):
            if c is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(c.fileno())
                with contextlib.suppress(Exception):
                    c.close()


__all__ = ["Child", "ChildCrashed", "ChildJobError", "MemoryLimitExceeded", "child_main"]

"""The code a sandboxed child runs: hygiene at boot, then jobs over its pipe.

Children are forked by a clean forkserver (never by the supervisor's running
event loop). They hold no Redis connection: a job comes in over the pipe;
progress, log lines, new children and a result or an error go back, as the
frames of :mod:`rqsup.sandbox.protocol` (data only). Nothing here imports
asyncio or redis (a test checks it), so a child boots fast and holds no
credentials. Exit codes are named (:data:`EXIT_BOOT_FAILED` ...), shared
with the supervisor.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from rqsup.sandbox import hygiene
from rqsup.sandbox.job import DEFAULT_MAX_LOG_LINE, ActiveJob
from rqsup.sandbox.protocol import (
    FrameReader,
    Kind,
    ProtocolError,
    decode,
    dumps,
    error_data,
    frame,
)

#: Exit codes of a child, as the supervisor reads them (out of the way of the
#: small codes a processor's own os._exit or sys.exit would use).
EXIT_STOPPED = 0        # asked to stop, or the supervisor's pipe closed
EXIT_BOOT_FAILED = 81   # its processor could not be loaded (reported first)
EXIT_PROTOCOL = 82      # the supervisor sent something it cannot read

#: A result larger than this is refused by the child itself (the supervisor
#: enforces it too: ``max_result`` of a queue's sandbox settings).
DEFAULT_MAX_RESULT = 16 << 20


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, sent once at its start (pickled, by the
    supervisor to the child: the trusted direction; local only)."""

    queue: str
    slot: int
    #: "module:function", or a cloudpickled callable.
    processor: str | bytes
    nice: int = 0
    user: str | int | None = None
    group: str | int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    #: Variables added to the scrubbed environment.
    env: dict[str, str] = field(default_factory=dict)
    #: The queue's default job options (stored form), under each job's own.
    defaults: dict[str, Any] = field(default_factory=dict)
    max_result_bytes: int = DEFAULT_MAX_RESULT
    max_log_line: int = DEFAULT_MAX_LOG_LINE
    #: Core dumps wanted (rlimit_core > 0): then the child stays dumpable.
    dumpable: bool = False


class _Writer:
    """Frames to the supervisor, whole, from any thread of the processor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, kind: Kind, body: bytes = b"") -> None:
        data = memoryview(frame(kind, body))
        with self._lock:
            while data:
                data = data[os.write(self.fd, data):]


class _ChildPort:
    """An :class:`ActiveJob`'s reports, as frames."""

    __slots__ = ("_w",)

    def __init__(self, writer: _Writer) -> None:
        self._w = writer

    def progress(self, encoded: str) -> None:
        self._w.send(Kind.PROGRESS, encoded.encode())

    def log(self, line: str) -> None:
        self._w.send(Kind.LOG, line.encode("utf-8", "replace"))

    def children(self, nodes: list[Any]) -> None:
        try:
            body = dumps(nodes)
        except TypeError as exc:
            raise ValueError(f"add_children: the children are not JSON: {exc}") from None
        self._w.send(Kind.CHILDREN, body)


def _title(text: str) -> None:
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(text)


def _watch_supervisor(alive: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            alive.recv_bytes()
    os.killpg(0, signal.SIGKILL)


#: The job this child runs now (one at a time), for the control thread, and
#: cancels that came before their job started (by job id; a few at most).
_current: list[ActiveJob | None] = [None]
_pending: dict[str, str] = {}
_cancel_lock = threading.Lock()


def _watch_cancels(fd: int) -> None:
    """The control pipe's reader: a CANCEL frame for the job running now
    sets its ``cancelled`` event (one for a job already done is ignored).
    Runs in a thread for the child's life; costs nothing per job."""
    reader = FrameReader(1 << 16)
    while True:
        try:
            chunk = os.read(fd, 1 << 12)
        except OSError:
            return
        if not chunk:
            return
        try:
            frames = reader.feed(chunk)
        except ProtocolError:
            return  # nothing more can be read right; jobs still run
        for kind, body in frames:
            if kind is not Kind.CANCEL:
                continue
            try:
                job_id, reason = decode(kind, body)
            except (ProtocolError, ValueError, TypeError):
                continue
            with _cancel_lock:
                job = _current[0]
                if job is None or job.id != job_id:
                    if len(_pending) > 100:
                        _pending.clear()
                    _pending[str(job_id)] = str(reason)
                    continue
            job.request_cancel(str(reason))


def _load(processor: str | bytes) -> Any:
    if isinstance(processor, bytes):
        import cloudpickle

        fn = cloudpickle.loads(processor)
    else:
        module, _, attr = processor.partition(":")
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"processor {processor!r} is not callable")
    import inspect

    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"processor {processor!r} is a coroutine function; mode 'process' "
                        "runs plain functions (use mode 'async' for coroutines)")
    return fn


def _run(spec: ChildSpec, fn: Any, w: _Writer, fields: Any) -> tuple[Kind, bytes]:
    """One job: the frame that ends it."""
    (job_id, name, attempts_made, attempts, timestamp_ms, data, opts, flow,
     progress) = fields
    options: Mapping[str, Any] = {**spec.defaults, **opts} if spec.defaults else (opts or {})
    flow = flow or {}
    job = ActiveJob(str(job_id), str(name), data, port=_ChildPort(w),
                    attempts_made=int(attempts_made), attempts=int(attempts),
                    timestamp_ms=int(timestamp_ms), options=options, progress=progress,
                    children_values=flow.get("values"), ignored_failures=flow.get("ignored"),
                    max_log_line=spec.max_log_line)
    with _cancel_lock:
        _current[0] = job
        early = _pending.pop(job.id, None)
    if early is not None:
        job.request_cancel(early)
    try:
        result = fn(job)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: report them
        return Kind.ERROR, dumps(job.error_info(exc))
    finally:
        # Before the result is sent: a cancel that comes later is for a job
        # given after it, never for this one (stale entries go too).
        with _cancel_lock:
            _current[0] = None
            _pending.clear()
    try:
        encoded = dumps(result)
    except TypeError as exc:
        err = error_data(exc, control="unrecoverable")
        err.update(type="EncodeError", message=f"result of job {job_id} is not JSON: {exc}")
        return Kind.ERROR, dumps(err)
    if len(encoded) > spec.max_result_bytes:
        err = error_data(ValueError(), control="unrecoverable")
        err.update(type="ResultTooLarge",
                   message=f"result of job {job_id} is {len(encoded)} bytes, over the cap of "
                           f"{spec.max_result_bytes} (max_result)")
        return Kind.ERROR, dumps(err)
    return Kind.RESULT, encoded


def child_main(spec: ChildSpec, conn: Connection, out: Connection, alive: Connection,
               control: Connection | None = None) -> None:
    """Entry point in the child (multiprocessing forkserver target)."""
    label = f"rqsup: child {spec.queue}#{spec.slot}"
    w = _Writer(conn.fileno())
    try:
        # setproctitle takes its space at its first call: before the
        # environment is rewritten (it would find none to take).
        _title(f"{label} booting")
        hygiene.boot(out_fd=out.fileno(), watch=lambda: _watch_supervisor(alive),
                     nice=spec.nice, rlimits=spec.rlimits, user=spec.user, group=spec.group,
                     env=spec.env, dumpable=spec.dumpable)
        fn = _load(spec.processor)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            w.send(Kind.BOOT_ERROR, dumps(error_data(exc)))
        os._exit(EXIT_BOOT_FAILED)
    if control is not None:
        threading.Thread(target=_watch_cancels, args=(control.fileno(),), daemon=True,
                         name="rqsup-cancels").start()
    w.send(Kind.READY, dumps({"pid": os.getpid()}))
    _title(f"{label} idle")
    reader = FrameReader()
    fd = conn.fileno()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:  # the supervisor's end is closed
            os._exit(EXIT_STOPPED)
        try:
            frames = reader.feed(chunk)
        except ProtocolError:
            os._exit(EXIT_PROTOCOL)
        for kind, body in frames:
            if kind is not Kind.JOB:
                os._exit(EXIT_STOPPED)  # STOP, or anything we do not know
            try:
                fields = decode(kind, body)
            except ProtocolError:
                os._exit(EXIT_PROTOCOL)
            _title(f"{label} busy job {fields[0]}")
            started = time.monotonic()
            end, payload = _run(spec, fn, w, fields)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # Nothing the job started outlives it (daemons included: we are
            # their subreaper).
            hygiene.reap_descendants()
            w.send(end, payload)
            _title(f"{label} idle (last job {time.monotonic() - started:.1f}s)")

"""The code a sandboxed child runs: hygiene at boot, then jobs over a pipe.

Children are forked by a clean forkserver (never by the supervisor's running
event loop). They hold no Redis connection: a job comes in over the pipe,
progress, log lines and a result or an error go back. Nothing here imports
asyncio or redis (a test checks it), so a child boots fast and holds no
credentials.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

#: prctl option: the kernel signals us when our parent dies.
_PR_SET_PDEATHSIG = 1
_RESET_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCHLD")


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs, sent once at its start (pickled, local only)."""

    queue: str
    slot: int
    #: "module:function", or a cloudpickled callable.
    processor: str | bytes
    nice: int = 0
    user: str | int | None = None
    group: str | int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)


class ChildJob:
    """What a processor gets in a child: the job, plus progress and logs."""

    __slots__ = ("_conn", "_flow", "attempts_made", "data", "id", "name")

    def __init__(
        self, conn: Connection, job_id: str, name: str, data: Any, attempts_made: int,
        flow: str | None = None,
    ) -> None:
        self._conn = conn
        self.id = job_id
        self.name = name
        self.data = data
        self.attempts_made = attempts_made
        #: A parent's children values and ignored failures (JSON text), or None.
        self._flow = flow

    def children_values(self) -> dict[str, Any]:
        """Return values of the children that completed, by "<queue>:<id>"."""
        return dict(orjson.loads(self._flow)["values"]) if self._flow else {}

    def ignored_failures(self) -> dict[str, str]:
        """Failed reasons of children with failure_policy "ignore", by "<queue>:<id>"."""
        return dict(orjson.loads(self._flow)["ignored"]) if self._flow else {}

    def add_children(self, children: Any) -> None:
        """Add child jobs to this job (step jobs), then ``raise WaitingChildren()``
        (``rqsup.WaitingChildren``, matched by name). The supervisor validates
        them; invalid children fail this attempt when it ends."""
        if not isinstance(children, list | tuple) or not children:
            raise ValueError(f"add_children needs a non-empty list of jobs, got {children!r:.60}")
        _send(self._conn, ("children", orjson.dumps(list(children)).decode()))

    def update_progress(self, value: Any) -> None:
        _send(self._conn, ("progress", orjson.dumps(value).decode()))

    def log(self, line: str) -> None:
        _send(self._conn, ("log", str(line)))

    def __repr__(self) -> str:
        return f"ChildJob(id={self.id!r}, name={self.name!r})"


_send_lock = threading.Lock()


def _send(conn: Connection, msg: tuple[Any, ...]) -> None:
    with _send_lock:  # a processor may report from threads of its own
        conn.send(msg)


def _title(text: str) -> None:
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(text)


def _hygiene(spec: ChildSpec, out_fd: int, alive: Connection) -> None:
    """Die with the supervisor, own process group, default signals, limits."""
    os.setpgid(0, 0)
    for name in _RESET_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    # Our parent is the forkserver, not the supervisor: watch the supervisor
    # through a pipe only it holds open, and take our whole group down with it.
    threading.Thread(target=_watch_supervisor, args=(alive,), daemon=True).start()
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    if spec.nice:
        os.nice(spec.nice)
    import resource

    for name, value in spec.rlimits.items():
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if spec.group is not None:
        import grp

        gid = spec.group if isinstance(spec.group, int) else grp.getgrnam(spec.group).gr_gid
        os.setgroups([])
        os.setgid(gid)
    if spec.user is not None:
        import pwd

        uid = spec.user if isinstance(spec.user, int) else pwd.getpwnam(spec.user).pw_uid
        os.setuid(uid)
    # After any uid change (which clears it). Linux only; the alive pipe covers
    # the rest. Our parent is the forkserver, which exits with the supervisor.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _watch_supervisor(alive: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            alive.recv_bytes()
    os.killpg(0, signal.SIGKILL)


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


def error_dict(exc: BaseException) -> dict[str, Any]:
    """Like rqsup.errors.error_info, without importing the package's redis parts."""
    return {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "stacktrace": "".join(traceback.format_exception(exc))[-8000:],
        "unrecoverable": bool(getattr(exc, "unrecoverable", False))
        or type(exc).__name__ == "UnrecoverableError",
        "rate_limit_delay_s": getattr(exc, "delay_s", None)
        if type(exc).__name__ == "RateLimited" else None,
    }


def child_main(spec: ChildSpec, conn: Connection, out: Connection, alive: Connection) -> None:
    """Entry point in the child (multiprocessing forkserver target)."""
    label = f"rqsup: child {spec.queue}#{spec.slot}"
    try:
        _hygiene(spec, out.fileno(), alive)
        _title(f"{label} booting")
        fn = _load(spec.processor)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _send(conn, ("boot_error", error_dict(exc)))
        os._exit(1)
    _send(conn, ("ready", os.getpid()))
    _title(f"{label} idle")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg[0] != "job":
            os._exit(0)  # "stop", or anything we do not know
        _, job_id, name, data_text, attempts_made, *rest = msg
        _title(f"{label} busy job {job_id}")
        started = time.monotonic()
        try:
            job = ChildJob(conn, job_id, name, orjson.loads(data_text or "null"), attempts_made,
                           rest[0] if rest else None)
            result = fn(job)
            try:
                encoded = orjson.dumps(result).decode()
            except TypeError as exc:
                info = error_dict(exc)
                info["type"] = "EncodeError"
                info["message"] = f"result of job {job_id} is not JSON: {exc}"
                info["unrecoverable"] = True
                reply: tuple[Any, ...] = ("error", info)
            else:
                reply = ("done", encoded)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: report them
            reply = ("error", error_dict(exc))
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        _send(conn, reply)
        _title(f"{label} idle (last job {time.monotonic() - started:.1f}s)")

"""What a processor sees, in every mode: :class:`ActiveJob`.

The same class, with the same attributes and methods, whether the processor
is a coroutine in the supervisor's loop, a function in a thread, or a
function in a sandboxed child: only its :class:`Port` (where progress, log
lines and new children go) differs. Imported by children, so it needs the
standard library only (and orjson, through the protocol module).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from rqsup.sandbox.protocol import dumps

#: Log lines longer than this are cut (``max_log_line`` in a queue's sandbox
#: settings changes it for children).
DEFAULT_MAX_LOG_LINE = 16 << 10
#: Guards the lazy creation of a job's ``cancelled`` event against a cancel
#: arriving from another thread at the same moment (uncontended: cheap).
_CANCEL_LOCK = threading.Lock()


class Port(Protocol):
    """Where a job's reports go; never blocks on Redis."""

    def progress(self, encoded: str) -> None: ...

    def log(self, line: str) -> None: ...

    def children(self, nodes: list[Any]) -> None: ...


class ActiveJob:
    """The job handed to a processor.

    ``update_progress`` and ``log`` never block on Redis: the worker writes
    them in order, fenced by the job's lease, before the job's result.
    ``options`` is the job's stored options over the queue's defaults (a
    read-only mapping; durations in milliseconds, as stored).
    """

    __slots__ = ("_cancelled", "_children", "_ignored", "_max_log_line", "_port", "_progress",
                 "attempts", "attempts_made", "cancel_reason", "data", "id", "moved_to", "name",
                 "options", "timestamp_ms")

    def __init__(self, job_id: str, name: str, data: Any, *, port: Port, attempts_made: int = 0,
                 attempts: int = 1, timestamp_ms: int = 0,
                 options: Mapping[str, Any] | None = None, progress: Any = None,
                 children_values: Mapping[str, Any] | None = None,
                 ignored_failures: Mapping[str, str] | None = None,
                 max_log_line: int = DEFAULT_MAX_LOG_LINE) -> None:
        self.id = job_id
        self.name = name
        self.data = data
        self.attempts_made = attempts_made
        self.attempts = attempts
        self.timestamp_ms = timestamp_ms
        self.options: Mapping[str, Any] = MappingProxyType(dict(options or {}))
        self._progress = progress
        self._port = port
        self._children = dict(children_values or {})
        self._ignored = dict(ignored_failures or {})
        self._max_log_line = max_log_line
        self._cancelled: threading.Event | None = None
        #: Why the job was cancelled (queue.cancel, worker.cancel_job), or None.
        self.cancel_reason: str | None = None
        #: What the processor asked before raising DelayedError / WaitingError:
        #: the due time in epoch ms (0: wait now), or None.
        self.moved_to: int | None = None

    def __repr__(self) -> str:
        return f"ActiveJob(id={self.id!r}, name={self.name!r})"

    @property
    def progress(self) -> Any:
        return self._progress

    def update_progress(self, value: Any) -> None:
        """Report progress: a number or any JSON value."""
        try:
            encoded = dumps(value).decode()
        except TypeError as exc:
            from rqsup.errors import EncodeError

            raise EncodeError(f"progress of job {self.id} cannot be encoded as JSON: "
                              f"{exc}") from None
        self._progress = value
        self._port.progress(encoded)

    def log(self, line: str) -> None:
        """Append a line to the job's log (kept up to the job's keep_logs; a
        line longer than the cap is cut, and says so)."""
        text = str(line)
        if len(text) > self._max_log_line:
            text = text[:self._max_log_line] + f"... [cut: {len(text)} characters]"
        self._port.log(text)

    # -- cancellation -----------------------------------------------------------

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job is cancelled (thread and process modes; an async
        processor gets CancelledError at its next await instead). Wait on it,
        or check ``is_set()`` between steps; then return, or raise
        JobCancelled. A process-mode processor that goes on past the queue's
        ``cancel_grace`` is killed."""
        with _CANCEL_LOCK:
            if self._cancelled is None:
                self._cancelled = threading.Event()
                if self.cancel_reason is not None:
                    self._cancelled.set()
            return self._cancelled

    def request_cancel(self, reason: str) -> None:
        """The worker (or the child's control thread) tells the job; any thread."""
        with _CANCEL_LOCK:
            self.cancel_reason = reason
            event = self._cancelled
        if event is not None:
            event.set()

    # -- running again later ---------------------------------------------------

    def move_to_delayed(self, when: float | datetime) -> None:
        """Run this job again at ``when`` (epoch seconds or a datetime) without
        spending an attempt: call it, then ``raise DelayedError()``."""
        if isinstance(when, datetime):
            ms = int(when.timestamp() * 1000)
        elif isinstance(when, int | float) and not isinstance(when, bool) and when >= 0:
            ms = int(when * 1000)
        else:
            raise ValueError(f"move_to_delayed needs epoch seconds or a datetime, got {when!r}")
        self.moved_to = max(ms, 1)

    def move_to_wait(self) -> None:
        """Put this job back in wait without spending an attempt: call it,
        then ``raise WaitingError()``."""
        self.moved_to = 0

    def error_info(self, exc: BaseException) -> dict[str, Any]:
        """``exc`` raised by the processor, as the worker reads it (errors.error_info),
        with what move_to_delayed / move_to_wait asked, or a clear failure
        when DelayedError or WaitingError comes without it."""
        from rqsup.errors import error_info

        info = error_info(exc)
        control = info.get("control")
        if control == "delayed" or control == "waiting":
            if self.moved_to is None or (control == "delayed") != (self.moved_to > 0):
                call = "move_to_delayed(when)" if control == "delayed" else "move_to_wait()"
                info["control"] = None
                info["message"] = (f"{info['type']} raised without job.{call} first: the job "
                                   "does not know where to go, so the attempt fails")
            elif control == "delayed":
                info["until_ms"] = self.moved_to
        return info

    # -- flows ------------------------------------------------------------------

    def children_values(self) -> dict[str, Any]:
        """Return values of the children that completed, by "<queue>:<id>"
        (as of when this attempt started)."""
        return dict(self._children)

    def ignored_failures(self) -> dict[str, str]:
        """Failed reasons of children with failure_policy "ignore", by "<queue>:<id>"."""
        return dict(self._ignored)

    def add_children(self, children: Any) -> None:
        """Add child jobs to this job (step jobs): a list of flow nodes
        ``{"name", "queue", "data", "opts", "children"}`` (queue defaults to
        this job's). Written in order with the job's other writes, fenced by
        its lease. Then ``raise WaitingChildren()``: the job runs again when
        they have finished. Invalid children raise here in async and thread
        modes; in a child process they fail the attempt when it ends."""
        if not isinstance(children, list | tuple) or not children:
            raise ValueError(f"add_children needs a non-empty list of jobs, got "
                             f"{children!r:.60}")
        self._port.children(list(children))

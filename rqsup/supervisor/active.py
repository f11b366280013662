"""What a processor sees: :class:`ActiveJob`, and the worker's record of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rqsup.queue import codec
from rqsup.queue.options import JobOptions
from rqsup.queue.record import JobRecord

#: ("progress", json) or ("log", line): sent to the worker, which writes them fenced.
Sink = Callable[[str, str], None]
#: What a parent knows of its finished children when it starts (flows): return
#: values (JSON text) and ignored failures (reasons), by "<queue>:<id>".
FlowInfo = tuple[dict[str, str], dict[str, str]]


class ActiveJob:
    """The job handed to a processor.

    ``update_progress`` and ``log`` never block on Redis: the worker writes
    them in order, fenced by the job's lease, before the job's result.
    """

    __slots__ = ("_flow", "_progress", "_sink", "_spawn", "attempts", "attempts_made", "data",
                 "id", "name", "options", "timestamp_ms")

    def __init__(self, record: JobRecord, sink: Sink, flow: FlowInfo | None = None,
                 spawn: Callable[[Any], None] | None = None) -> None:
        self.id = record.id
        self.name = record.name
        self.data = record.data
        self.attempts_made = record.attempts_made
        self.attempts = record.attempts
        self.timestamp_ms = record.timestamp_ms
        self.options = record.options
        self._progress = record.progress
        self._sink = sink
        self._flow = flow
        self._spawn = spawn

    def __repr__(self) -> str:
        return f"ActiveJob(id={self.id!r}, name={self.name!r})"

    @property
    def progress(self) -> Any:
        return self._progress

    def update_progress(self, value: Any) -> None:
        """Report progress: a number or any JSON value."""
        encoded = codec.encode(value, f"progress of job {self.id}")
        self._progress = value
        self._sink("progress", encoded)

    def log(self, line: str) -> None:
        """Append a line to the job's log (kept up to the job's keep_logs)."""
        self._sink("log", str(line))

    # -- flows ------------------------------------------------------------------

    def children_values(self) -> dict[str, Any]:
        """Return values of the children that completed, by "<queue>:<id>"
        (as of when this attempt started)."""
        if not self._flow:
            return {}
        return {ref: codec.decode(v) for ref, v in self._flow[0].items()}

    def ignored_failures(self) -> dict[str, str]:
        """Failed reasons of children with failure_policy "ignore", by "<queue>:<id>"."""
        return dict(self._flow[1]) if self._flow else {}

    def add_children(self, children: Any) -> None:
        """Add child jobs to this job (step jobs): a list of flow nodes
        ``{"name", "queue", "data", "opts", "children"}`` (queue defaults to
        this job's). Validated now (InvalidOption, EncodeError); written in
        order with the job's other writes, fenced by its lease. Then ``raise
        WaitingChildren()``: the job runs again when they have finished."""
        if self._spawn is None:
            raise RuntimeError("add_children is not available for this job")
        self._spawn(children)


@dataclass(eq=False)
class Running:
    """The worker's record of one claimed job, until Redis acknowledged its end."""

    record: JobRecord
    token: str
    options: JobOptions
    started: float = field(default_factory=time.monotonic)
    #: The processor returned or raised; its outcome is queued in the pump.
    finished: bool = False
    #: The lease is gone (or the worker gave up on it): never write its result.
    lost: bool = False
    task: asyncio.Task[None] | None = None
    #: Process mode: handed to a child (a prefetched job waits until then).
    dispatched: bool = False
    #: Process mode: the child's add_children was invalid; the attempt fails.
    children_error: str | None = None
    #: add_children calls so far (a resend of one is recognised by its number).
    children_calls: int = 0
    #: log calls so far (log.lua skips a resend of one it applied).
    log_calls: int = 0
    #: The attempt this run is (1-based) and how many the job has.
    attempt: int = 1
    attempts: int = 1
    #: The error of a failed attempt (type, message) and the retry delay chosen
    #: (-1: none), for the log line written when Redis acknowledged it.
    error: tuple[str, str] | None = None
    retry_delay_ms: int = -1
    #: Why the worker stopped the job (lease lost, timed out, shutdown ...).
    stop_reason: str | None = None

    @property
    def id(self) -> str:
        return self.record.id

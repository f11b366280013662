"""The worker's record of a job it runs (:class:`Running`), and the in-process
side of :class:`ActiveJob` (the one job class every mode hands a processor)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rqsup.queue.options import JobOptions
from rqsup.queue.record import JobRecord
from rqsup.sandbox.job import ActiveJob

#: ("progress", json) or ("log", line): sent to the worker, which writes them fenced.
Sink = Callable[[str, str], None]
#: What a parent knows of its finished children when it starts (flows): return
#: values (JSON text) and ignored failures (reasons), by "<queue>:<id>".
FlowInfo = tuple[dict[str, str], dict[str, str]]


class InProcessPort:
    """An ActiveJob's reports in async and thread modes: into the worker's pump
    (``sink``); ``spawn`` validates new children in the caller, so an invalid
    one raises in the processor."""

    __slots__ = ("_sink", "_spawn")

    def __init__(self, sink: Sink, spawn: Callable[[Any], None]) -> None:
        self._sink = sink
        self._spawn = spawn

    def progress(self, encoded: str) -> None:
        self._sink("progress", encoded)

    def log(self, line: str) -> None:
        self._sink("log", line)

    def children(self, nodes: list[Any]) -> None:
        self._spawn(nodes)


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
    #: Set when the job was cancelled (rqsup.supervisor.cancels).
    cancel_reason: str | None = None
    #: The job handed to an in-process processor (thread mode: told of a cancel).
    job: ActiveJob | None = None
    #: The return value, kept for a worker.on("completed") callback only.
    result: Any = None
    #: The run's CONSUMER span (tracing on), else None.
    span: Any = None

    @property
    def id(self) -> str:
        return self.record.id


__all__ = ["ActiveJob", "FlowInfo", "InProcessPort", "Running", "Sink"]

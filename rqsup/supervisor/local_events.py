"""A worker's local events (BullMQ's ``worker.on``): what happened in this
process, told to callbacks without a Redis round trip.

``completed(job, value)``, ``failed(job, error)`` (a JobFailed, once the
attempt's failure is recorded), ``progress(job, value)``, ``stalled(job_id)``
(jobs this worker's sweep requeued), ``error(exc)`` (the worker's loop
crashed and restarts) and ``drained()`` (the queue looked empty after work).
``job`` is the job as claimed (a JobRecord). A callback may be a coroutine
function (run as a task); one that raises is logged, nothing else.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from rqsup.errors import InvalidOption

log = logging.getLogger("rqsup.worker")

NAMES = ("completed", "failed", "progress", "stalled", "error", "drained")


class LocalEvents:
    __slots__ = ("_callbacks", "_tasks", "active")

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[..., Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Any callback at all (a plain attribute: checked on every job's path).
        self.active = False

    def on(self, name: str, callback: Callable[..., Any]) -> None:
        if name not in NAMES:
            raise InvalidOption(f"unknown worker event {name!r}; known: {', '.join(NAMES)}")
        if not callable(callback):
            raise InvalidOption(f"a callback for {name!r} must be callable, got {callback!r}")
        self._callbacks.setdefault(name, []).append(callback)
        self.active = True

    def off(self, name: str, callback: Callable[..., Any]) -> None:
        with_it = self._callbacks.get(name, [])
        if callback in with_it:
            with_it.remove(callback)
        self.active = any(self._callbacks.values())

    def wants(self, name: str) -> bool:
        return self.active and bool(self._callbacks.get(name))

    def emit(self, name: str, *args: Any) -> None:
        for cb in list(self._callbacks.get(name, ())):
            try:
                result = cb(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                log.exception("worker event callback for %s failed", name)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker event callback failed", exc_info=task.exception())

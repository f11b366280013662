"""Request/response: wait for a job's outcome, with one event reader per process.

Every waiter of a queue in a process shares one reader of the queue's event
stream (a thread for sync code, a task per event loop for asyncio), which
hands ``completed``/``failed`` events to waiters by job id. No event is
missed: a new reader starts at a known stream position (the job's ``added``
event for ``queue.call``), finished jobs are remembered briefly, and a
waiter that heard nothing for a while asks Redis directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import redis
import redis.asyncio as aredis

from rqsup.errors import JobFailed, JobNotFound
from rqsup.queue import codec
from rqsup.queue.connection import client_key, reraise_if_cancelling
from rqsup.queue.events import (
    BLOCK_MS,
    Event,
    alast_stream_id,
    last_stream_id,
    parse_entries,
    stream_id_key,
)
from rqsup.queue.record import JobRecord

log = logging.getLogger("rqsup.waiters")

#: A waiter that heard nothing for this long checks the job in Redis itself.
CHECK_INTERVAL_S = 2.0
#: A reader with no waiters for this long stops.
READER_IDLE_S = 30.0
#: Outcomes remembered for waiters that register just after the event.
RECENT_OUTCOMES = 10_000

Outcome = tuple[str, Any]  # ("completed", value) | ("failed", JobFailed) | ("removed", None)


def outcome_from_event(ev: Event) -> Outcome | None:
    if ev.job_id is None:
        return None
    if ev.name == "completed":
        return ("completed", codec.decode(ev.fields.get("returnvalue") or "null"))
    if ev.name == "failed":
        return (
            "failed",
            JobFailed(
                ev.job_id,
                ev.fields.get("error_type", "Error"),
                ev.fields.get("reason", ""),
                ev.fields.get("stacktrace") or None,
            ),
        )
    if ev.name == "removed":
        return ("removed", None)
    return None


def outcome_from_record(rec: JobRecord) -> Outcome:
    if rec.raw.get("_state") == "completed":
        return ("completed", rec.return_value)
    return (
        "failed",
        JobFailed(rec.id, rec.error_type or "Error", rec.failed_reason or "", rec.stacktrace),
    )


def resolve(job_id: str, outcome: Outcome) -> Any:
    kind, value = outcome
    if kind == "failed":
        raise value
    if kind == "removed":
        raise JobNotFound(job_id)
    return value


class WaiterBook:
    """Job id -> waiting slots, and recent outcomes; shared by both readers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[str, list[Callable[[Outcome], None]]] = {}
        #: job id -> (stream id of the outcome event, outcome)
        self.recent: OrderedDict[str, tuple[str, Outcome]] = OrderedDict()

    def register(
        self, job_id: str, slot: Callable[[Outcome], None], after_id: str | None
    ) -> Outcome | None:
        """Only an outcome newer than ``after_id`` (the job's ``added`` event) is
        this job's: ids are reused after removal or obliterate. Without
        ``after_id`` the caller checks Redis itself."""
        with self.lock:
            hit = self.recent.get(job_id)
            if (
                hit is not None
                and after_id is not None
                and stream_id_key(hit[0]) > stream_id_key(after_id)
            ):
                return hit[1]
            self.slots.setdefault(job_id, []).append(slot)
            return None

    def unregister(self, job_id: str, slot: Callable[[Outcome], None]) -> None:
        with self.lock:
            slots = self.slots.get(job_id)
            if slots and slot in slots:
                slots.remove(slot)
                if not slots:
                    del self.slots[job_id]

    def dispatch(self, events: list[Event]) -> None:
        fire: list[tuple[Callable[[Outcome], None], Outcome]] = []
        with self.lock:
            for ev in events:
                outcome = outcome_from_event(ev)
                if outcome is None or ev.job_id is None:
                    continue
                self.recent[ev.job_id] = (ev.stream_id, outcome)
                if len(self.recent) > RECENT_OUTCOMES:
                    self.recent.popitem(last=False)
                for slot in self.slots.pop(ev.job_id, ()):
                    fire.append((slot, outcome))
        for slot, outcome in fire:
            slot(outcome)

    def idle(self) -> bool:
        with self.lock:
            return not self.slots


class SyncEventReader(threading.Thread):
    """The process's reader of one queue's events for sync waiters."""

    _registry: dict[tuple[int, str], SyncEventReader] = {}
    _registry_lock = threading.Lock()

    def __init__(self, client: redis.Redis, key: str, start_id: str) -> None:
        super().__init__(name=f"rqsup-events {key}", daemon=True)
        self.client = client
        self.key = key
        self.position = start_id
        self.book = WaiterBook()
        self.halt = threading.Event()  # set by stop_for or when idle too long

    @classmethod
    def for_queue(cls, client: redis.Redis, key: str, start_id: str | None) -> SyncEventReader:
        ident = (client_key(client), key)
        with cls._registry_lock:
            reader = cls._registry.get(ident)
            if reader is None or reader.halt.is_set() or not reader.is_alive():
                reader = cls(client, key, start_id or last_stream_id(client, key))
                cls._registry[ident] = reader
                reader.start()
            return reader

    @classmethod
    def stop_for(cls, client: redis.Redis) -> None:
        """Stop the readers that use ``client`` (its owner is closing it); each
        ends within one block interval."""
        pool = client_key(client)
        with cls._registry_lock:
            for ident in [i for i in cls._registry if i[0] == pool]:
                cls._registry.pop(ident).halt.set()

    def run(self) -> None:
        idle_since = time.monotonic()
        backoff_s = 0.05
        while not self.halt.is_set():
            try:
                reply = self.client.xread({self.key: self.position}, count=1000, block=BLOCK_MS)
                backoff_s = 0.05
            except Exception as exc:
                # Any error (a lost connection, a client closed under us): a
                # reader that died would leave every waiter on the slow check.
                if self.halt.is_set():
                    return
                log.warning("event reader %s: %s; retrying in %.2fs", self.key, exc, backoff_s)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                reply = None
            for _key, entries in cast(Any, reply) or []:
                events = parse_entries(entries)
                if events:
                    self.position = events[-1].stream_id
                    self.book.dispatch(events)
            if not self.book.idle():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > READER_IDLE_S:
                with self._registry_lock, self.book.lock:
                    if not self.book.slots:
                        self.halt.set()
                        return


class AsyncEventReader:
    """The loop's reader of one queue's events for asyncio waiters."""

    _registry: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, dict[tuple[int, str], AsyncEventReader]
    ] = weakref.WeakKeyDictionary()

    def __init__(self, client: aredis.Redis, key: str, start_id: str) -> None:
        self.client = client
        self.key = key
        self.position = start_id
        self.book = WaiterBook()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def for_queue(
        cls, client: aredis.Redis, key: str, start_id: str | None
    ) -> AsyncEventReader:
        loop = asyncio.get_running_loop()
        readers = cls._registry.setdefault(loop, {})
        ident = (client_key(client), key)
        reader = readers.get(ident)
        if reader is None or reader.task is None or reader.task.done():
            start = start_id or await alast_stream_id(client, key)
            reader = readers.get(ident)  # another task may have won the race
            if reader is None or reader.task is None or reader.task.done():
                reader = cls(client, key, start)
                readers[ident] = reader
                reader.task = loop.create_task(reader.run(), name=f"rqsup-events {key}")
        return reader

    @classmethod
    def stop_for(cls, client: aredis.Redis) -> None:
        """Cancel this loop's readers that use ``client`` (it is being closed)."""
        readers = cls._registry.get(asyncio.get_running_loop(), {})
        pool = client_key(client)
        for ident in [i for i in readers if i[0] == pool]:
            task = readers.pop(ident).task
            if task is not None:
                task.cancel()

    async def run(self) -> None:
        idle_since = time.monotonic()
        backoff_s = 0.05
        while True:
            try:
                reply = await self.client.xread(
                    {self.key: self.position}, count=1000, block=BLOCK_MS
                )
                # redis-py can swallow a cancel that lands in a blocked read.
                reraise_if_cancelling()
                backoff_s = 0.05
            except Exception as exc:  # as in the sync reader: never die silently
                reraise_if_cancelling()
                log.warning("event reader %s: %s; retrying in %.2fs", self.key, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                reply = None
            for _key, entries in cast(Any, reply) or []:
                events = parse_entries(entries)
                if events:
                    self.position = events[-1].stream_id
                    self.book.dispatch(events)
            if not self.book.idle():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > READER_IDLE_S:
                return

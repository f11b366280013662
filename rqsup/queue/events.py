"""Queue events: the capped stream per queue, read as objects.

:class:`QueueEvents` is an async iterator (and a callback dispatcher) over a
queue's event stream, resumable from any stream id.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aredis

from rqsup.keys import QueueKeys
from rqsup.queue import codec
from rqsup.queue.connection import async_client

log = logging.getLogger("rqsup.events")

#: The longest a blocking stream read waits before looking at its stop flag.
BLOCK_MS = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``name`` (added, active, completed, failed, ...), the job id, fields.

    From :class:`QueueEvents` the fields are decoded as BullMQ gives them: a
    completed event's ``returnvalue`` and a progress event's ``progress`` as
    the JSON values they are, counts (``attempts_made``, ``delay``,
    ``count``, ...) as ints; every other field is text."""

    stream_id: str
    name: str
    job_id: str | None
    fields: dict[str, Any]


#: Fields of rqsup's own events that hold JSON (decoded for QueueEvents).
JSON_FIELDS = {"completed": "returnvalue", "progress": "progress"}
#: Fields of rqsup's own events that hold integers.
INT_FIELDS = frozenset({"attempts_made", "delay", "count", "priority", "debounced"})


def decode_fields(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """An event's fields with JSON and integer values decoded; a value that
    does not decode stays text (a custom event may reuse a name)."""
    out = dict(fields)
    json_field = JSON_FIELDS.get(name)
    if json_field is not None and json_field in out:
        with contextlib.suppress(ValueError):
            out[json_field] = codec.decode(out[json_field])
    for key in INT_FIELDS.intersection(out):
        with contextlib.suppress(ValueError):
            out[key] = int(out[key])
    return out


def parse_entries(entries: Sequence[Any], decode: bool = False) -> list[Event]:
    """Parse XREAD/XRANGE entries ``[(id, {field: value}) ...]`` (``decode``:
    as :func:`decode_fields`; the internal readers keep the raw text)."""
    out = []
    for sid, raw in entries:
        fields: dict[str, Any] = (
            {codec.text(k): codec.text(v) for k, v in raw.items()}
            if isinstance(raw, dict)
            else {codec.text(a): codec.text(b) for a, b in zip(raw[::2], raw[1::2], strict=True)}
        )
        name = fields.pop("event", "")
        job_id = fields.pop("id", None)
        out.append(Event(codec.text(sid), name, job_id,
                         decode_fields(name, fields) if decode else fields))
    return out


def stream_id_key(sid: str) -> tuple[int, int]:
    """Order stream ids ("ms-seq") numerically."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def last_stream_id(client: redis.Redis, key: str) -> str:
    entries = client.xrevrange(key, count=1)
    return codec.text(entries[0][0]) if entries else "0-0"


async def alast_stream_id(client: aredis.Redis, key: str) -> str:
    entries = await client.xrevrange(key, count=1)
    return codec.text(entries[0][0]) if entries else "0-0"


Callback = Callable[[Event], Awaitable[None] | None]


class QueueEvents:
    """Read a queue's events, from ``last_id`` on ("$": only new ones; "0": all kept).

    Use as ``async for event in queue_events`` or register callbacks with
    :meth:`on` and ``await queue_events.run()``. ``last_id`` after each event
    is the id to resume from.
    """

    def __init__(
        self,
        queue: str,
        url: str | None = None,
        *,
        connection: aredis.Redis | None = None,
        prefix: str = "rqsup",
        last_id: str = "$",
    ) -> None:
        self.keys = QueueKeys(prefix, queue)
        self.client = connection or async_client(url)
        self._own_client = connection is None
        self.last_id = last_id
        self._callbacks: dict[str, list[Callback]] = {}
        self._closed = False
        self._queue: Any = None  # an AsyncQueue on this client, made by wait_for

    async def wait_for(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for a job to finish, by id (no job object needed): its return
        value, or JobFailed; JobNotFound if it is removed; TimeoutError."""
        if self._queue is None:
            from rqsup.queue.aqueue import AsyncQueue

            self._queue = AsyncQueue(self.keys.queue, connection=self.client,
                                     prefix=self.keys.prefix)
        return await self._queue.wait_for(job_id, timeout)

    def on(self, event: str, callback: Callback) -> None:
        """Call ``callback(event)`` for events named ``event`` ("*" for all)."""
        self._callbacks.setdefault(event, []).append(callback)

    async def _read(self) -> list[Event]:
        if self.last_id == "$":
            self.last_id = await alast_stream_id(self.client, self.keys.events)
        reply = await self.client.xread({self.keys.events: self.last_id}, count=500, block=BLOCK_MS)
        events: list[Event] = []
        for _key, entries in cast(Any, reply) or []:
            events.extend(parse_entries(entries, decode=True))
        if events:
            self.last_id = events[-1].stream_id
        return events

    async def __aiter__(self) -> AsyncIterator[Event]:
        backoff_s = 0.05
        while not self._closed:
            try:
                events = await self._read()
                backoff_s = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("events of %s: %s; retrying in %.2fs", self.keys.queue, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            for ev in events:
                yield ev

    async def run(self) -> None:
        """Dispatch events to the callbacks until :meth:`close`."""
        async for ev in self:
            for cb in (*self._callbacks.get(ev.name, ()), *self._callbacks.get("*", ())):
                try:
                    result = cb(ev)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("event callback for %s failed", ev.name)

    async def close(self) -> None:
        self._closed = True
        if self._queue is not None:
            await self._queue.close()
        if self._own_client:
            await self.client.aclose()

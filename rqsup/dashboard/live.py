"""Live pages: one shared reader of every queue's event stream per dashboard,
fanned out to the open tabs as server-sent events.

However many tabs are open, Redis sees one blocking XREAD over the queues'
streams, and one count read per changed queue at most every half second:
tabs never poll. Each message is JSON: ``{"type": "counts", "queue",
"counts"}``, ``{"type": "event", "queue", "event", "job_id"}``, or, for the
first page of a job list an open tab shows, ``{"type": "list", "queue",
"state", "jobs"}`` (read once per change, whatever the number of tabs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from rqsup.dashboard.data import Data
from rqsup.queue.connection import REDIS_ERRORS, xread_many
from rqsup.queue.events import parse_entries

log = logging.getLogger("rqsup.dashboard")

#: Counts of a changed queue are sent at most this often.
COUNTS_EVERY_S = 0.5
#: Queues are looked for again this often (a new queue joins the reader).
DISCOVER_EVERY_S = 10.0
#: The supervisors page is rendered again this often (heartbeats come about
#: once a renew interval), once for every tab showing it.
SUPERVISORS_EVERY_S = 2.0
#: A tab that falls this far behind loses messages instead of growing memory.
TAB_BACKLOG = 1000


class Live:
    def __init__(self, data: Data) -> None:
        self.data = data
        self.tabs: set[asyncio.Queue[str]] = set()
        #: The job lists open tabs show (queue, state) -> how many tabs: the
        #: reader reads each one's first page once per change, for all of them.
        self.lists: dict[tuple[str, str], int] = {}
        #: Tabs on the supervisors page: the reader renders it for them.
        self.supervisor_tabs = 0
        #: Renders the supervisors list (set by the app: its templates).
        self.render_supervisors: Any = None
        self.base = ""
        self._task: asyncio.Task[None] | None = None

    def _send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, default=str)
        for tab in list(self.tabs):
            with contextlib.suppress(asyncio.QueueFull):
                tab.put_nowait(text)

    async def _run(self) -> None:
        last: dict[str, str] = {}
        keys: dict[str, str] = {}
        loop = asyncio.get_running_loop()
        found_at = sent_at = beats_at = 0.0
        touched: set[str] = set()
        while self.tabs:
            try:
                if loop.time() - found_at > DISCOVER_EVERY_S:
                    for name in await self.data.names():
                        key = self.data.q(name).core.keys.events
                        if key not in keys:
                            keys[key] = name
                            last[key] = "$"
                    found_at = loop.time()
                if self.supervisor_tabs and self.render_supervisors is not None \
                        and loop.time() - beats_at > SUPERVISORS_EVERY_S:
                    html = self.render_supervisors(await self.data.supervisors())
                    self._send({"type": "supervisors", "html": html})
                    beats_at = loop.time()
                if not keys:
                    await asyncio.sleep(1.0)
                    continue
                streams: Any = dict(last)
                reply: Any = await xread_many(self.data.client, streams, count=500, block=500)
                for key, entries in reply or []:
                    k = key.decode() if isinstance(key, bytes) else str(key)
                    found = keys.get(k)
                    if found is None or not entries:
                        continue
                    name = found
                    last[k] = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) \
                        else str(entries[-1][0])
                    touched.add(name)
                    for ev in parse_entries(entries):
                        self._send({"type": "event", "queue": name, "event": ev.name,
                                    "job_id": ev.job_id})
                if touched and loop.time() - sent_at > COUNTS_EVERY_S:
                    for name in sorted(touched):
                        counts = await self.data.q(name).counts()
                        self._send({"type": "counts", "queue": name, "counts": counts})
                        for (queue, state), n in list(self.lists.items()):
                            if queue == name and n > 0:
                                page = await self.data.jobs(queue, state, 0, 50, None)
                                self._send({"type": "list", "queue": queue, "state": state,
                                            "jobs": page["jobs"]})
                    touched.clear()
                    sent_at = loop.time()
            except REDIS_ERRORS as exc:
                log.warning("dashboard live reader: %s; retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug here must not end every tab's live updates
                log.exception("dashboard live reader failed; going on")
                await asyncio.sleep(1.0)

    def _ensure_reader(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="rqsup dashboard live")

    async def stream(self, watch: tuple[str, str] | None = None,
                     supervisors: bool = False) -> AsyncIterator[str]:
        """One tab's server-sent events (the reader runs while any tab is open);
        ``watch``: the (queue, state) whose first page the tab shows;
        ``supervisors``: the tab shows the supervisors page."""
        tab: asyncio.Queue[str] = asyncio.Queue(TAB_BACKLOG)
        self.tabs.add(tab)
        self.supervisor_tabs += int(supervisors)
        if watch is not None:
            self.lists[watch] = self.lists.get(watch, 0) + 1
        self._ensure_reader()
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    text = await asyncio.wait_for(tab.get(), 15.0)
                    yield f"data: {text}\n\n"
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            self.tabs.discard(tab)
            self.supervisor_tabs -= int(supervisors)
            if watch is not None:
                self.lists[watch] -= 1
                if self.lists[watch] <= 0:
                    del self.lists[watch]

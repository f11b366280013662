"""A supervisor's name in Redis: held by one incarnation at a time, fenced.

Worker ids are ``<name>@<incarnation>``: on start, once the previous
incarnation is known to be gone, its jobs are requeued at once. The name is
taken with a compare-and-set (``hold_name.lua``): free, or still holding the
value of a holder known to be dead. A live holder on this host is refused at
once; one on another host is waited for until its heartbeat expires. The
heartbeat and the release are compare-and-set too, so an incarnation that
lost its name (its key expired during a partition and another took it)
finds out instead of overwriting the other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

import psutil
import redis.asyncio as aredis

from rqsup.keys import supervisor_key
from rqsup.queue import codec
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.roster import beat_requests
from rqsup.queue.scripts import Batch, Script

log = logging.getLogger("rqsup.supervisor")


class NameInUse(RuntimeError):
    """Another live supervisor holds this name."""


class Identity:
    def __init__(self, client: aredis.Redis, prefix: str, name: str, ttl_s: float) -> None:
        self.driver = AsyncDriver(client)
        self.prefix = prefix
        self.name = name
        self.key = supervisor_key(prefix, name)
        self.ttl_ms = round(ttl_s * 1000)
        self.incarnation = uuid.uuid4().hex[:10]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.worker_prefix = f"{name}@"
        self.worker_id = f"{name}@{self.incarnation}"

    def value(self, status: dict[str, Any] | None = None) -> str:
        """The heartbeat: who we are, plus what the supervisor reports."""
        return json.dumps({"kind": "supervisor", "name": self.name, "host": self.host,
                           "pid": self.pid,
                           "incarnation": self.incarnation, "started_at": self.started_at,
                           "at": time.time(), **(status or {})})

    async def _hold(self, *args: Any) -> tuple[bool, str]:
        done, cur = await self.driver.execute(Script("hold_name", (self.key,), args))
        return int(done) == 1, codec.text(cur)

    async def claim(self, wait_s: float) -> None:
        """Take the name: at once when free or its holder is dead; refuse a live
        holder on this host at once; wait up to ``wait_s`` for one elsewhere."""
        deadline = time.monotonic() + wait_s
        warned = False
        expected = ""
        while True:
            ok, cur = await self._hold("take", self.incarnation, self.value(), expected,
                                       self.ttl_ms)
            if ok:
                await self.driver.execute(Batch(beat_requests(self.prefix, self.key,
                                                              self.ttl_ms)))
                return
            expected = ""
            info = _parse(cur)
            if info.get("host") == self.host:
                if not _alive_here(info):
                    expected = cur  # dead: replace exactly that value, nothing newer
                    continue
                raise NameInUse(
                    f"supervisor name {self.name!r} is held by a live supervisor on this host "
                    f"(pid {info.get('pid')}); give each supervisor its own name")
            if time.monotonic() > deadline:
                raise NameInUse(
                    f"supervisor name {self.name!r} is in use by a live supervisor on "
                    f"{info.get('host')!r} (pid {info.get('pid')}); give each its own name")
            if not warned:
                log.warning("supervisor %s: the name is held by %s on %s; waiting up to %.0fs "
                            "for its heartbeat to expire", self.name, info.get("pid"),
                            info.get("host"), wait_s)
                warned = True
            await asyncio.sleep(0.25)

    async def heartbeat(self, status: dict[str, Any]) -> bool:
        """Refresh the name with ``status`` (and its roster entry, in the same
        round trip); False if another incarnation holds it."""
        hold = Script("hold_name", (self.key,), ("beat", self.incarnation, self.value(status),
                                                 self.ttl_ms))
        replies = await self.driver.execute(
            Batch([hold, *beat_requests(self.prefix, self.key, self.ttl_ms)]))
        done, raw = replies[0]
        ok, cur = int(done) == 1, codec.text(raw)
        if not ok:
            info = _parse(cur)
            log.error("supervisor %s: the name is now held by another incarnation (pid %s on "
                      "%s): this one's heartbeat expired (a long pause or partition?)",
                      self.name, info.get("pid"), info.get("host"))
        return ok

    async def release(self) -> None:
        await self._hold("release", self.incarnation, "", 0)


def _parse(raw: str) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _alive_here(info: dict[str, Any]) -> bool:
    """Is the holder (on this host) a live rqsup process other than us?"""
    try:
        pid = int(info.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "rqsup" in " ".join(proc.cmdline())
    except psutil.Error:
        return False

"""Health of the supervisor: event-loop lag, its identity in Redis, log setup.

The loop lag is how late a 50 ms timer fires: the one number that says
whether the supervisor can still renew leases and answer systemd on time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from typing import Any

import psutil
import redis.asyncio as aredis

log = logging.getLogger("rqsup.supervisor")

LAG_TICK_S = 0.05


class LagMonitor:
    """Samples the event-loop lag continuously; keeps the last minute."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=1200)
        self.last_tick = time.monotonic()

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            now = time.monotonic()
            self.samples.append(max(0.0, now - before - LAG_TICK_S))
            self.last_tick = now

    def p99_ms(self) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def max_recent_s(self, n: int = 20) -> float:
        recent = list(self.samples)[-n:]
        stalled = time.monotonic() - self.last_tick - LAG_TICK_S
        return max([*recent, stalled, 0.0])


class Identity:
    """A supervisor's stable name in Redis, with a liveness key per incarnation.

    Worker ids are ``<name>@<incarnation>``: on start, once the previous
    incarnation is known to be gone, its jobs are requeued at once.
    """

    def __init__(self, client: aredis.Redis, prefix: str, name: str, ttl_s: float) -> None:
        self.client = client
        self.name = name
        self.key = f"{prefix}:supervisor:{name}"
        self.ttl_ms = round(ttl_s * 1000)
        self.incarnation = uuid.uuid4().hex[:10]
        self.host = socket.gethostname()
        self.worker_prefix = f"{name}@"
        self.worker_id = f"{name}@{self.incarnation}"

    def _value(self) -> str:
        return json.dumps({"host": self.host, "pid": os.getpid(),
                           "incarnation": self.incarnation, "at": time.time()})

    async def claim(self, wait_s: float) -> None:
        """Wait until no other incarnation of this name is alive; then take the name.
        A previous incarnation on this host whose pid is gone counts as gone at once."""
        deadline = time.monotonic() + wait_s
        warned = False
        while True:
            raw: Any = await self.client.get(self.key)
            if raw is None or self._gone(raw):
                await self.client.set(self.key, self._value(), px=self.ttl_ms)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"supervisor name {self.name!r} is in use by a live supervisor "
                    f"({raw.decode(errors='replace')}); give each supervisor its own name"
                )
            if not warned:
                log.warning("supervisor %s: a previous incarnation may still be alive (%s); "
                            "waiting for its liveness key to expire", self.name,
                            raw.decode(errors="replace"))
                warned = True
            await asyncio.sleep(0.25)

    def _gone(self, raw: bytes) -> bool:
        try:
            info: dict[str, Any] = json.loads(raw)
        except ValueError:
            return True
        if info.get("host") != self.host:
            return False  # another host: only the key's expiry tells
        pid = int(info.get("pid", 0))
        if pid == os.getpid():
            return True
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
            return not (alive and "rqsup" in " ".join(proc.cmdline()))
        except psutil.Error:
            return True

    async def heartbeat(self) -> None:
        await self.client.set(self.key, self._value(), px=self.ttl_ms)

    async def release(self) -> None:
        raw: Any = await self.client.get(self.key)
        if raw is not None and self.incarnation in raw.decode(errors="replace"):
            await self.client.delete(self.key)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    """Logs go to stderr (journald under systemd, which adds its own time)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""What the supervisor says about itself: the heartbeat in Redis, the status
line (log, process title, systemd ``STATUS=``) and the watchdog.

Health combines the event loop's lag, whether Redis answered recently, the
child pools (a processor that will not boot) and the supervision tree (a
task in a crash loop). A failed queue is reported everywhere; the watchdog
is withheld only while the whole supervisor is unable to work: its loop is
stuck, Redis has been gone for long, a task that serves every queue (the
renewer, the heartbeat) keeps crashing, or every queue is failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rqsup import __version__
from rqsup.queue.connection import REDIS_ERRORS
from rqsup.queue.faults import Episode
from rqsup.supervisor import maintenance
from rqsup.supervisor.health import set_title

if TYPE_CHECKING:
    from rqsup.supervisor.app import Supervisor

log = logging.getLogger("rqsup.supervisor")


class StatusReporter:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.redis_ok_at = time.monotonic()
        #: False once another incarnation took our name: the supervisor stops.
        self.name_held = True

    # -- what is wrong ------------------------------------------------------------

    def failed_queues(self) -> dict[str, str]:
        """Queues that claim nothing because something keeps failing, with why."""
        out = dict(self.sup.tree.failed_queues())
        for w in self.sup.workers.values():
            if w.pool is not None and w.pool.failed:
                out.setdefault(w.queue_name, f"processor does not boot: {w.pool.failed}")
        return out

    def redis_ok(self) -> bool:
        s = self.sup.config.supervisor
        return time.monotonic() - self.redis_ok_at <= max(3 * s.renew_interval_s, 10.0)

    def healthy(self) -> bool:
        s = self.sup.config.supervisor
        if self.sup.lag.max_recent_s() > s.max_loop_lag_s:
            return False
        if not self.redis_ok() or self.sup.tree.degraded():
            return False
        workers = self.sup.workers
        return not workers or len(self.failed_queues()) < len(workers)

    # -- the heartbeat --------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The heartbeat's content (besides identity): ``rqsup status`` reads it."""
        failed = self.failed_queues()
        queues = []
        for w in self.sup.workers.values():
            q: dict[str, Any] = {"name": w.queue_name, "mode": w.mode,
                                 "concurrency": w.concurrency, "running": w.busy_count(),
                                 "jobs": maintenance.running_ids(w),
                                 "state": "failed" if w.queue_name in failed else "ok"}
            if w.queue_name in failed:
                q["reason"] = failed[w.queue_name]
            if w.pool is not None:
                q["children"] = w.pool.describe()
            queues.append(q)
        return {"version": __version__, "queues": queues,
                "loop_lag_p99_ms": round(self.sup.lag.p99_ms(), 2),
                "task_restarts": dict(self.sup.restart_counts),
                "degraded": self.sup.tree.degraded(), "healthy": self.healthy()}

    async def heartbeat_loop(self) -> None:
        sup = self.sup
        assert sup.identity is not None
        episode = Episode("heartbeat", log)
        interval = sup.config.supervisor.renew_interval_s
        while True:
            await asyncio.sleep(min(interval, episode.next_delay_s) if episode.active
                                else interval)
            try:
                self.name_held = await sup.identity.heartbeat(self.report())
                self.redis_ok_at = time.monotonic()
                episode.ok()
            except REDIS_ERRORS as exc:
                episode.note(exc)
            if not self.name_held:
                log.error("supervisor %s: stopping, its name belongs to another incarnation",
                          sup.config.supervisor.name)
                sup.stop_requests = max(sup.stop_requests, 1)
                sup.intent.set()
                return

    # -- the status line ------------------------------------------------------------

    async def waiting(self) -> int | None:
        """Jobs ready to run across our queues (wait + prioritized); None if
        Redis did not answer."""
        sup = self.sup
        if sup.client is None or not sup.workers:
            return 0
        try:
            async with sup.client.pipeline(transaction=False) as pipe:
                for w in sup.workers.values():
                    pipe.llen(w.core.keys.wait)
                    pipe.zcard(w.core.keys.prioritized)
                return sum(int(n) for n in await pipe.execute())
        except REDIS_ERRORS:
            return None

    def text(self, waiting: int | None = None) -> str:
        sup = self.sup
        running = sum(w.busy_count() for w in sup.workers.values())
        text = f"{running} running"
        if waiting is not None:
            text += f", {waiting} waiting"
        text += f", loop lag p99 {sup.lag.p99_ms():.1f} ms"
        if not self.redis_ok():
            text += ", Redis unreachable"
        failed = self.failed_queues()
        if failed:
            text += ", failed: " + "; ".join(f"queue {q} ({why})" for q, why in failed.items())
        degraded = sup.tree.degraded()
        if degraded:
            text += ", crash-looping: " + "; ".join(f"{n} ({e})" for n, e in degraded.items())
        return text

    async def status_loop(self) -> None:
        """The process title every second; the status line every status interval."""
        s = self.sup.config.supervisor
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(s.status_interval_s, 1.0))
            running = sum(w.busy_count() for w in self.sup.workers.values())
            set_title(f"rqsup: supervisor {s.name} ({running} running)")
            if time.monotonic() - last >= s.status_interval_s:
                last = time.monotonic()
                text = self.text(await self.waiting())
                self.sup.notifier.status(text)
                log.info("status: %s", text)

    async def watchdog_loop(self) -> None:
        interval = self.sup.notifier.watchdog_interval_s or 15.0
        while True:
            await asyncio.sleep(interval)
            if self.healthy():
                self.sup.notifier.watchdog()
            else:
                log.warning("unhealthy (%s): withholding WATCHDOG=1", self.text())

"""The supervisor's side of schedulers: upsert ``[[schedulers]]``, advance runs.

A scheduler's next run is added once its pending run has *started* (as
BullMQ does when the job moves to active), by :class:`SchedulerLoop`: a task
of every supervisor that wakes when the earliest pending run is due, finds
the runs that were claimed and adds the following ones. State lives in Redis
only and every step is a compare-and-set script, so any number of
supervisors may run it at once and a restarted one just carries on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import redis.asyncio as aredis

from rqsup.config.model import Config
from rqsup.config.schedulers import SchedulerConfig
from rqsup.errors import RqsupError
from rqsup.queue.connection import CONNECTION_ERRORS
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.schedule import Schedule
from rqsup.queue.schedulers import op_advance_due, op_upsert

log = logging.getLogger("rqsup.schedulers")

#: Right after a pending run is due its worker claims it within milliseconds;
#: while it has not, look again this often (for a while, then every interval).
RECHECK_S = 0.05
RECHECK_WINDOW_MS = 2000
#: Wake a little after a run is due, so that a worker has claimed it.
DUE_SLACK_S = 0.02


class SchedulerLoop:
    """Advance the schedulers of some queues, until cancelled.

    ``interval_s`` bounds the sleep between passes: it is how late a run
    whose job was claimed (or that sat waiting for a worker) is seen at worst.
    Usable outside the supervisor: ``await SchedulerLoop(client, ["q"]).run()``.
    """

    def __init__(self, client: aredis.Redis, queues: Iterable[str], prefix: str = "rqsup",
                 interval_s: float = 1.0) -> None:
        self.driver = AsyncDriver(client)
        self.prefix = prefix
        self.interval_s = interval_s
        self.cores: dict[str, QueueCore] = {}
        self.set_queues(queues)

    def set_queues(self, queues: Iterable[str]) -> None:
        self.cores = {q: self.cores.get(q) or QueueCore(q, self.prefix) for q in queues}

    async def tick(self) -> float:
        """One pass over every queue; returns how long to sleep before the next."""
        sleep = self.interval_s
        for name, core in list(self.cores.items()):
            report = await self.driver.drive(op_advance_due(core))
            for sid, reason in report.done:
                log.info("scheduler %s of queue %s is done (%s)", sid, name, reason)
            if report.added or report.more:
                sleep = 0.0  # look again: the new runs set the next wake-up
            if report.next_due_ms >= 0:
                sleep = min(sleep, report.next_due_ms / 1000 + DUE_SLACK_S)
            if 0 <= report.waiting_since_ms < RECHECK_WINDOW_MS:
                sleep = min(sleep, RECHECK_S)
        return max(sleep, 0.0)

    async def run(self) -> None:
        while True:
            try:
                sleep = await self.tick()
            except CONNECTION_ERRORS as exc:
                log.warning("schedulers: Redis unreachable (%s); retrying", exc)
                sleep = self.interval_s
            except Exception:  # a malformed scheduler hash, a script error: go on
                log.exception("schedulers: advancing failed; retrying")
                sleep = self.interval_s
            await asyncio.sleep(sleep)


async def upsert_configured(client: aredis.Redis, prefix: str,
                            schedulers: Sequence[SchedulerConfig]) -> None:
    """Upsert every ``[[schedulers]]`` table; an unchanged one keeps its pending run."""
    driver = AsyncDriver(client)
    for s in schedulers:
        try:
            schedule = Schedule.build(cron=s.cron, every=s.every_s, tz=s.tz, start=s.start_ms,
                                      end=s.end_ms, limit=s.limit, immediately=s.immediately)
            template = {"name": s.name or s.id, "data": s.data, "options": s.options}
            info = await driver.drive(op_upsert(QueueCore(s.queue, prefix), s.id, schedule,
                                                template, s.count))
        except RqsupError as exc:
            log.error("scheduler %s of queue %s not upserted: %s", s.id, s.queue, exc)
            continue
        when = info.next_run.isoformat() if info.next_run else f"none (done: {info.done})"
        log.info("scheduler %s of queue %s: next run %s", s.id, s.queue, when)


def loop_queues(config: Config) -> list[str]:
    """The queues whose schedulers this supervisor advances: its own and those
    its ``[[schedulers]]`` name."""
    names = [q.name for q in config.queues]
    return names + sorted({s.queue for s in config.schedulers} - set(names))


async def start(client: aredis.Redis, config: Config) -> SchedulerLoop:
    """At supervisor start (after recovery): upsert the config's schedulers and
    build the loop (the caller runs ``loop.run()`` with its other timers)."""
    served = {q.name for q in config.queues}
    for s in config.schedulers:
        if s.queue not in served:
            log.warning("scheduler %s adds jobs to queue %s, which this supervisor does not "
                        "serve: another one must", s.id, s.queue)
    await upsert_configured(client, config.redis.prefix, config.schedulers)
    return SchedulerLoop(client, loop_queues(config), config.redis.prefix)


async def reload(loop: SchedulerLoop, client: aredis.Redis, config: Config) -> None:
    """On SIGHUP: upsert the (new) ``[[schedulers]]`` and follow the queue list.
    A scheduler deleted from the file stays in Redis: remove it with
    ``queue.remove_scheduler(id)`` (another supervisor may declare it too)."""
    try:
        await upsert_configured(client, config.redis.prefix, config.schedulers)
    except CONNECTION_ERRORS as exc:
        log.error("reload: schedulers not upserted, Redis unreachable: %s", exc)
    loop.set_queues(loop_queues(config))

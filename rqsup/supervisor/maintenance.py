"""The worker's timers: lease renewal, the stall sweep, the heartbeat, and the idle
wait for work.

Each is a loop of its own so that none waits behind another: a slow sweep
never delays a renewal. No Redis error ends one: each keeps an
:class:`~rqsup.queue.faults.Episode` that logs an outage once and its end
once, and retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from rqsup import __version__
from rqsup.keys import worker_key
from rqsup.queue import codec
from rqsup.queue.connection import REDIS_ERRORS, reraise_if_cancelling
from rqsup.queue.faults import Episode
from rqsup.queue.options import DEFAULT_KEEP_FAILED
from rqsup.queue.roster import beat_requests
from rqsup.queue.scripts import Batch, Command, Script
from rqsup.supervisor import cancels
from rqsup.supervisor.tree import Supervised, Tree

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")

#: A standalone worker's heartbeat is at least this frequent (it lists the
#: jobs it runs: get_workers should not lag far behind).
HEARTBEAT_MAX_INTERVAL_S = 2.0
#: Jobs requeued per sweep call at most.
SWEEP_LIMIT = 1000


def renew_request(w: Worker) -> Script | None:
    """The renew call for every lease ``w`` holds (None: it holds none)."""
    args: list[Any] = []
    pids = w.pool.pids() if w.pool is not None else None
    me = os.getpid()
    for r in list(w.running.values()):
        if not r.lost:
            # Who runs it (stall forensics): its child, or this process.
            pid = (pids.get(r.id, "") if pids is not None else me)
            args += [r.id, r.token, pid]
    return w.core.script("renew", w.lease_ms, *args) if args else None


def apply_renew_reply(w: Worker, reply: list[Any]) -> None:
    """``reply``: [tokens whose lease is gone, cancelled token/reason pairs].
    A job whose outcome is already on its way is not "lost": its end was
    simply faster than the renewal."""
    w.renewals += 1
    lost, cancelled = reply
    if cancelled:
        cancels.on_renew_reply(w, cancelled)
    for token in lost:
        r = w.running.get(codec.text(token))
        if r is not None and not r.finished:
            w.on_lease_lost(r, "at lease renewal")


async def renew_all(workers: list[Worker], episode: Episode,
                    on_latency: Callable[[float], None] | None = None) -> bool:
    """One pipelined round trip renews the leases of every worker given (the
    supervisor's renewer: all queues, one call). False if Redis failed.
    ``on_latency``: told the round trip's time (metrics)."""
    reqs = [(w, req) for w in workers if (req := renew_request(w)) is not None]
    if not reqs:
        return True
    try:
        began = time.monotonic()
        replies = await workers[0].driver.execute_each([req for _w, req in reqs])
        if on_latency is not None:
            on_latency(time.monotonic() - began)
    except REDIS_ERRORS as exc:
        reraise_if_cancelling()
        episode.note(exc)
        return False
    ok = True
    for (w, _req), reply in zip(reqs, replies, strict=True):
        if isinstance(reply, BaseException):
            episode.note(reply)
            ok = False
        else:
            apply_renew_reply(w, reply)
    if ok:
        episode.ok()
    return ok


async def renew_forever(workers: Any, interval_s: float, what: str,
                        on_latency: Callable[[float], None] | None = None) -> None:
    """Renew every ``interval_s``; after a failure, retry soon (with backoff)
    instead of a whole interval later. ``workers()`` lists the workers now."""
    episode = Episode(what, log, first_s=min(0.1, interval_s / 4), max_s=interval_s)
    delay = interval_s
    while True:
        await asyncio.sleep(delay)
        if await renew_all(list(workers()), episode, on_latency):
            delay = interval_s
        else:
            delay = min(episode.next_delay_s, interval_s)


async def renew_leases(w: Worker) -> None:
    """Renew every lease this worker holds, in one call, every renew interval."""
    await renew_forever(lambda: [w], w.renew_interval_s,
                        f"queue {w.queue_name}: renewing leases")


async def sweep_stalled(w: Worker) -> None:
    """Requeue jobs whose lease expired; at most one sweep per interval cluster-wide."""
    interval_ms = round(w.stall_interval_s * 1000)
    keep = DEFAULT_KEEP_FAILED
    episode = Episode(f"queue {w.queue_name}: stall sweep", log)
    while True:
        try:
            _swept, requeued, failed = await w.driver.execute(
                w.core.script(
                    "sweep_stalled", interval_ms, w.max_stalled_count,
                    1 if w.stall_counts_as_attempt else 0, SWEEP_LIMIT,
                    keep["count"], keep["age_ms"],
                )
            )
            episode.ok()
            if (requeued or failed) and w.metrics is not None:
                w.metrics.stalled.inc(len(requeued) + len(failed))
                for _ in failed:
                    w.metrics.failed("", "stalled")
            if requeued and w.events.active:
                for job_id in requeued:
                    w.events.emit("stalled", codec.text(job_id))
            if requeued or failed:
                log.warning(
                    "queue %s: stalled jobs requeued %s, failed %s", w.queue_name,
                    [codec.text(i) for i in requeued], [codec.text(i) for i in failed],
                )
        except REDIS_ERRORS as exc:
            reraise_if_cancelling()
            episode.note(exc)
        # Jitter spreads the sweepers of many workers over the interval.
        await asyncio.sleep(w.stall_interval_s * random.uniform(0.5, 1.0))


async def give_back(w: Worker, worker_id: str, *, count_stall: bool = False,
                    within_s: float | None = None) -> None:
    """Requeue everything active under ``worker_id`` (retrying while Redis
    fails, for up to a lease; after that the stall sweeper recovers them)."""
    episode = Episode(f"queue {w.queue_name}: giving back the jobs of {worker_id}", log)
    deadline = time.monotonic() + (within_s if within_s is not None else w.lease_ms / 1000)
    req = w.core.script("requeue_worker", worker_id, 1 if count_stall else 0)
    while True:
        try:
            ids = await asyncio.wait_for(w.driver.execute(req),
                                         max(0.1, deadline - time.monotonic()))
            break
        except (*REDIS_ERRORS, TimeoutError) as exc:
            delay = episode.note(exc)
            if time.monotonic() + delay >= deadline:
                log.error("queue %s: could not give back the jobs of %s (%s); the stall "
                          "sweeper will recover them", w.queue_name, worker_id, exc)
                return
            await asyncio.sleep(delay)
    episode.ok()
    if ids:
        log.warning("queue %s: gave back %d unfinished job(s) of %s: %s", w.queue_name,
                    len(ids), worker_id, [codec.text(i) for i in ids])


def running_ids(w: Worker, limit: int = 1000) -> list[str]:
    """Ids of the jobs ``w`` runs now (for heartbeats: get_workers)."""
    return [r.id for r in list(w.running.values()) if not r.finished][:limit]


def heartbeat_value(w: Worker) -> str:
    return orjson.dumps({
        "kind": "worker", "name": w.worker_id, "host": socket.gethostname(),
        "pid": os.getpid(), "version": __version__, "started_at": w.started_at,
        "at": time.time(),
        "queues": [{"name": w.queue_name, "mode": w.mode, "concurrency": w.concurrency,
                    "running": w.busy_count(), "jobs": running_ids(w)}]}).decode()


async def heartbeat(w: Worker) -> None:
    """A standalone Worker's heartbeat, so that ``get_workers`` lists it (a
    supervisor lists its workers in its own heartbeat)."""
    key = worker_key(w.core.prefix, w.worker_id)
    interval = min(w.renew_interval_s, HEARTBEAT_MAX_INTERVAL_S)
    ttl_ms = round(max(3 * interval, 10) * 1000)
    episode = Episode(f"queue {w.queue_name}: heartbeat", log)
    try:
        while True:
            try:
                await w.driver.execute(Batch([
                    Command(("SET", key, heartbeat_value(w), "PX", ttl_ms)),
                    *beat_requests(w.core.prefix, key, ttl_ms)]))
                episode.ok()
            except REDIS_ERRORS as exc:
                reraise_if_cancelling()
                episode.note(exc)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(*REDIS_ERRORS, RuntimeError):
            await asyncio.shield(w.driver.execute(Command(("DEL", key))))


def handed_off(w: Worker, member: bytes) -> None:
    """An add claimed a job for us and woke us with it (add.lua, hand-off)."""
    if not member.startswith(b"[") or not w.claiming:
        return  # a stop wake; or closing: the job is given back with the rest
    try:
        job_id, token, fields = orjson.loads(member)
    except (ValueError, TypeError):
        log.error("queue %s: unreadable hand-off %r; giving back what it held",
                  w.queue_name, member[:80])
        w.pump.check_orphans = True
        w.pump.wake.set()
        return
    w.start_job(str(job_id), str(token), fields)


async def wait_for_work(w: Worker) -> None:
    """While the queue looks drained, block on the marker until an add (or a due
    delayed job) may have made work; never sleep-and-poll."""
    pump = w.pump
    episode = Episode(f"queue {w.queue_name}: waiting for work", log, max_s=1.0)
    while w.claiming:
        await pump.idle.wait()
        if not w.claiming:
            return  # type: ignore[unreachable]  # claiming changed during the wait
        timeout_s = w.block_timeout_s
        if pump.next_due_ms >= 0:
            timeout_s = min(timeout_s, pump.next_due_ms / 1000)
        if timeout_s > 0:
            try:
                popped: Any = await w.block_client.bzpopmin(
                    [w.wake_key, w.core.keys.marker], max(timeout_s, 0.001)
                )
                reraise_if_cancelling()
                episode.ok()
                if popped and codec.text(popped[0]) == w.wake_key:
                    handed_off(w, popped[1])
            except REDIS_ERRORS as exc:
                reraise_if_cancelling()
                # The pop may have taken a hand-off whose reply we lost: the job
                # is active under our id; the pump's orphan check gives it back.
                pump.check_orphans = True
                await episode.failed(exc)
        pump.want_claim()


async def drain(w: Worker, unit: Supervised) -> None:
    """Stop claiming, let running jobs finish within the close timeout, hand back the rest.

    Nothing is cancelled in the middle of a Redis call here: a cancel can
    lose a reply (a claim's jobs would sit active until their lease ran out)."""
    Tree.retire(unit)
    w.claiming = False
    w.pump.idle.set()  # the wait-for-work loop sees claiming off and returns
    if w.pool is not None:
        # Prefetched jobs still waiting for a child do not start now.
        w.pool.draining = True
        for r in w.running.values():
            if not r.dispatched and not r.finished and r.task is not None:
                r.lost = True
                r.task.cancel()
    with contextlib.suppress(*REDIS_ERRORS):
        # No more hand-offs to us; and wake our own blocked wait.
        await w.client.zrem(w.core.keys.idle, w.idle_member)
        await w.client.zadd(w.wake_key, {"stop": 0})
    deadline = time.monotonic() + w._close_timeout_s
    while time.monotonic() < deadline:
        # Every running job has a task (thread jobs await their thread in it).
        tasks = [
            r.task for r in w.running.values()
            if r.task and not r.finished and not r.task.done()
        ]
        if not tasks or w._hurry.is_set():
            break
        hurry = asyncio.create_task(w._hurry.wait())
        await asyncio.wait([*tasks, hurry], timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
    for r in w.running.values():
        if not r.finished:
            r.lost = True
            r.stop_reason = "shutdown"
            if r.task:
                r.task.cancel()
    # The pump sends what is queued (outcomes, the orphan check), then returns.
    w.pump.stopping = True
    w.pump.wake.set()
    grace = max(5.0, w.block_timeout_s)
    if not await Tree.wait(unit, grace):
        log.error("worker %s: could not write queued outcomes within %.0fs (Redis "
                  "unreachable?); the stall sweeper will recover their jobs",
                  w.worker_id, grace)
        return
    with contextlib.suppress(*REDIS_ERRORS):
        await w.client.delete(w.wake_key)
    # Everything still active under our id (jobs cut off above, jobs of a
    # claim that was in flight when the close began) goes back at once.
    await w.give_back(w.worker_id, within_s=grace)

"""The worker's timers: lease renewal, the stall sweep, and the idle wait for work.

Each is a loop of its own so that none waits behind another: a slow sweep
never delays a renewal.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

import orjson

from rqsup.queue import codec
from rqsup.queue.connection import CONNECTION_ERRORS, reraise_if_cancelling
from rqsup.queue.options import DEFAULT_KEEP_FAILED
from rqsup.queue.scripts import Batch, Script

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")

#: Jobs requeued per sweep call at most.
SWEEP_LIMIT = 1000


def renew_request(w: Worker) -> Script | None:
    """The renew call for every lease ``w`` holds (None: it holds none)."""
    pairs: list[Any] = []
    for r in list(w.running.values()):
        if not r.lost:
            pairs += [r.id, r.token]
    return w.core.script("renew", w.lease_ms, *pairs) if pairs else None


def apply_renew_reply(w: Worker, lost: list[Any]) -> None:
    w.renewals += 1
    by_id = {r.id: r for r in w.running.values()}
    for job_id in lost:
        hit = by_id.get(codec.text(job_id))
        if hit is not None:
            w.on_lease_lost(hit.id, hit.token, "at lease renewal")


async def renew_all(workers: list[Worker]) -> bool:
    """One pipelined round trip renews the leases of every worker given (the
    supervisor's renewer: all queues, one call). False if Redis failed."""
    reqs = [(w, req) for w in workers if (req := renew_request(w)) is not None]
    if not reqs:
        return True
    try:
        replies = await workers[0].driver.execute(Batch([req for _w, req in reqs]))
    except CONNECTION_ERRORS as exc:
        reraise_if_cancelling()
        log.warning("lease renewal failed (%s); retrying", exc)
        return False
    for (w, _req), lost in zip(reqs, replies, strict=True):
        apply_renew_reply(w, lost)
    return True


async def renew_leases(w: Worker) -> None:
    """Renew every lease this worker holds, in one call, every renew interval."""
    while True:
        await asyncio.sleep(w.renew_interval_s)
        await renew_all([w])


async def sweep_stalled(w: Worker) -> None:
    """Requeue jobs whose lease expired; at most one sweep per interval cluster-wide."""
    interval_ms = round(w.stall_interval_s * 1000)
    keep = DEFAULT_KEEP_FAILED
    while True:
        try:
            _swept, requeued, failed = await w.driver.execute(
                w.core.script(
                    "sweep_stalled", interval_ms, w.max_stalled_count,
                    1 if w.stall_counts_as_attempt else 0, SWEEP_LIMIT,
                    keep["count"], keep["age_ms"],
                )
            )
            if requeued or failed:
                log.warning(
                    "queue %s: stalled jobs requeued %s, failed %s", w.queue_name,
                    [codec.text(i) for i in requeued], [codec.text(i) for i in failed],
                )
        except CONNECTION_ERRORS as exc:
            reraise_if_cancelling()
            log.warning("queue %s: stall sweep failed (%s)", w.queue_name, exc)
        # Jitter spreads the sweepers of many workers over the interval.
        await asyncio.sleep(w.stall_interval_s * random.uniform(0.5, 1.0))


def handed_off(w: Worker, member: bytes) -> None:
    """An add claimed a job for us and woke us with it (add.lua, hand-off)."""
    if not member.startswith(b"[") or not w.claiming:
        return  # a stop wake; or closing: the job is given back with the rest
    job_id, token, fields = orjson.loads(member)
    w.start_job(job_id, token, fields)


async def wait_for_work(w: Worker) -> None:
    """While the queue looks drained, block on the marker until an add (or a due
    delayed job) may have made work; never sleep-and-poll."""
    backoff_s = 0.05
    pump = w.pump
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
                if popped and codec.text(popped[0]) == w.wake_key:
                    handed_off(w, popped[1])
                backoff_s = 0.05
            except CONNECTION_ERRORS as exc:
                reraise_if_cancelling()
                log.warning("queue %s: waiting for work failed (%s); retrying in %.2fs",
                            w.queue_name, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
        pump.want_claim()

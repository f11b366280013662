"""Cancelling running jobs: from any process (``queue.cancel``) or locally
(``worker.cancel_job``), in every mode.

cancel.lua marks the job and PUBLISHes on the queue's cancel channel; each
worker listens there (:func:`listen`), and renew.lua's reply carries the
same news as a backstop (a message lost while the connection was down is
heard at the next renewal). The processor is told by mode:

- async: its task is cancelled, so it gets ``CancelledError`` at its next
  await;
- thread: ``job.cancelled`` is set (the thread cannot be stopped: it runs on
  until it returns);
- process: a CANCEL frame on the child's control pipe sets ``job.cancelled``
  there; after ``cancel_grace`` the child is killed if it has not returned.

The job then fails with JobCancelled and the reason, without a retry, unless
the processor returns a value (it completes) or raises another error (an
ordinary failure, retried as usual): that is how a processor asks for a
retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from rqsup.errors import JobCancelled, error_info
from rqsup.queue.connection import REDIS_ERRORS, is_cluster, reraise_if_cancelling
from rqsup.queue.faults import Episode
from rqsup.supervisor.active import Running
from rqsup.supervisor.joblog import job_line

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")


def cancel_running(w: Worker, r: Running, reason: str) -> bool:
    """Tell the processor of ``r`` that its job is cancelled; False if it
    had already ended (or was cancelled before)."""
    if r.finished or r.lost or r.cancel_reason is not None:
        return False
    r.cancel_reason = reason
    job_line(logging.WARNING, w.queue_name, r.id, r.attempt, r.attempts, "cancelled: %s",
             reason)
    if w.mode == "async" or (w.pool is not None and not r.dispatched):
        if r.task is not None and not r.task.done():
            r.task.cancel()  # a prefetched job never reaches a child
        return True
    if w.mode == "thread":
        if r.job is not None:
            r.job.request_cancel(reason)
        return True
    assert w.pool is not None
    w.pool.cancel(r.id, reason)
    grace = w.pool.settings.cancel_grace_s
    asyncio.get_running_loop().call_later(grace, _kill_if_running, w, r)
    return True


def _kill_if_running(w: Worker, r: Running) -> None:
    """The grace is over: a child still on the cancelled job is killed (the
    job task's cancel kills the child's tree, as for a timeout)."""
    if r.finished or r.lost or r.task is None or r.task.done():
        return
    r.stop_reason = f"cancelled ({r.cancel_reason}) and still running after the grace"
    r.task.cancel()


def cancelled_info(r: Running) -> dict[str, Any]:
    """The failure a cancelled job gets (unrecoverable: no retry)."""
    return error_info(JobCancelled(r.cancel_reason or "cancelled"))


def on_message(w: Worker, data: Any) -> None:
    """A cancel.lua PUBLISH: ``[job id, token, reason]``."""
    try:
        job_id, token, reason = orjson.loads(data)
    except (ValueError, TypeError):
        log.warning("queue %s: unreadable cancel message %r", w.queue_name, data[:80])
        return
    r = w.running.get(str(token))
    if r is not None and r.id == str(job_id):
        cancel_running(w, r, str(reason))


def on_renew_reply(w: Worker, pairs: list[Any]) -> None:
    """renew.lua's backstop: ``[token, reason, ...]`` of cancelled jobs we hold."""
    for i in range(0, len(pairs) - 1, 2):
        token = pairs[i].decode() if isinstance(pairs[i], bytes) else str(pairs[i])
        r = w.running.get(token)
        if r is not None:
            reason = pairs[i + 1]
            cancel_running(w, r, reason.decode() if isinstance(reason, bytes) else str(reason))


async def listen(w: Worker) -> None:
    """Follow the queue's cancel channel for as long as the worker runs."""
    episode = Episode(f"queue {w.queue_name}: cancel messages", log)
    channel = w.core.keys.cancel_channel
    if not hasattr(w.client, "pubsub"):
        # redis-py's asyncio Cluster client has pub/sub only in newer releases.
        log.warning("queue %s: this redis-py has no pub/sub on a Cluster client; a cancel is "
                    "heard at the job's next lease renewal instead", w.queue_name)
        await asyncio.Event().wait()
    while True:
        pubsub = None
        try:
            if is_cluster(w.client):
                # Its pub/sub finds the channel's node in the slot map, which
                # an uninitialised client does not have yet.
                await w.client.initialize()
            pubsub = w.client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel)
            episode.ok()
            while True:
                msg = await pubsub.get_message(timeout=30.0)
                if msg is not None and msg.get("type") == "message":
                    on_message(w, msg["data"])
        except (*REDIS_ERRORS, RuntimeError, OSError) as exc:
            # redis-py's pub/sub may also raise RuntimeError on a connection
            # dropped under it: a transient like the rest, never a crash.
            reraise_if_cancelling()
            delay = episode.note(exc)
            await asyncio.sleep(delay)
        finally:
            if pubsub is not None:
                await asyncio.shield(_close(pubsub))


async def _close(pubsub: Any) -> None:
    with contextlib.suppress(Exception):  # a broken connection is being dropped
        await pubsub.aclose()

"""Request/response for sync callers: the answer comes on a reply list.

``Queue.call`` adds its job with a reply list of its own
(``<base>:reply:<token>``); the script that ends the job pushes the outcome
there (answer_call, common.lua) and the caller blocks on it with BLPOP in
its own thread. Against waiting on the events stream this saves the hop
through the process's reader thread and the parsing of every event of the
queue; and with no options the add and the BLPOP go in one write, so the
wait starts without a round trip in between (fastadd.FastAdd.call).

An answer can be missing: the job was removed (it never ends), the pop's
connection failed, or the add was deduplicated onto a job that has no reply
list. So the caller also checks the job in Redis every CHECK_INTERVAL_S, as
the event waiters do, and a deduplicated add waits the events' way.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from rqsup.errors import JobFailed
from rqsup.queue import codec, fastadd
from rqsup.queue.waiters import CHECK_INTERVAL_S, Outcome, outcome_from_record, resolve

if TYPE_CHECKING:
    from rqsup.queue.queue import Queue


def reply_key(queue: Queue) -> str:
    return queue.core.keys.reply(secrets.token_hex(8))


def outcome_from_reply(popped: Any) -> Outcome | None:
    """BLPOP's ``[key, payload]`` -> the outcome; None for an unreadable one
    (the caller then reads the job itself)."""
    try:
        job_id, completed, value, etype, reason, stack = orjson.loads(popped[1])
        if completed:
            return ("completed", codec.decode(value))
        return ("failed", JobFailed(str(job_id), etype or "Error", reason, stack or None))
    except (ValueError, TypeError, IndexError):
        return None


def call(queue: Queue, name: str, data: Any, timeout: float | None,
         options: dict[str, Any]) -> Any:
    """Add a job and return its outcome (``Queue.call``)."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def step() -> float:
        if deadline is None:
            return CHECK_INTERVAL_S
        left = deadline - time.monotonic()
        return max(min(CHECK_INTERVAL_S, left), 0.0)

    if options.get("parent") is not None:  # a flow's child: waited for by its events
        job = queue.add(name, data, **options)
        return queue.wait_for(job.id, timeout, job.added_event or None)
    rk = reply_key(queue)
    fast = None
    if fastadd.usable(queue, options):
        if queue._fast is None:
            queue._fast = fastadd.FastAdd(queue)
        fast = queue._fast.call(queue, name, data, rk, max(step(), 0.001))
    if fast is not None:
        added, popped = fast
        job_id = added.id
    else:
        job = queue._add_for_call(name, data, options, rk)
        if job.add_outcome != "created":  # another job stands for it: no reply list
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return queue.wait_for(job.id, left, job.added_event or None)
        job_id = job.id
        popped = queue.client.blpop([rk], timeout=max(step(), 0.001))
    client = queue.client
    while True:
        if popped:
            outcome = outcome_from_reply(popped)
            if outcome is not None:
                return resolve(job_id, outcome)
        # No answer yet: the job may have ended a way that answers nobody.
        rec = queue._driver.drive(queue.core.op_finished(job_id))
        if rec is not None:
            return resolve(job_id, outcome_from_record(rec))
        wait_s = step()
        if wait_s <= 0:
            raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
        popped = client.blpop([rk], timeout=max(wait_s, 0.001))

"""The pump: every write a worker makes for its jobs, in as few round trips as possible.

Progress, log lines, failures and completions queue up here while a call
is in flight; the next call carries all of them, plus a claim for every
free slot (group commit). Under load one round trip serves many jobs; an
idle worker still answers in one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from rqsup.errors import Code
from rqsup.queue import codec
from rqsup.queue.connection import CONNECTION_ERRORS, reraise_if_cancelling
from rqsup.queue.scripts import Batch, Script

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")

#: Group commit under load (process mode): wait up to LINGER_S for up to
#: LINGER_BATCH completions before a call.
LINGER_S = 0.002
LINGER_BATCH = 128

_FAIL_OUTCOMES = {1: "retrying now", 2: "retrying later", 3: "failed", 0: "already recorded"}
#: What an end of an attempt other than complete/fail did, by script and code.
_END_OUTCOMES = {
    "rate_limited": {0: "rate limited: back in wait"},
    "move_to_waiting_children": {1: "waiting for its children", 0: "already recorded",
                                 2: "its children are done: back in wait",
                                 3: "failed (a child failed, or it has no children)"},
}


class Pump:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        #: (job id, token, script request) in the order the processor made them.
        self.writes: list[tuple[str, str, Script]] = []
        self.completes: list[tuple[str, str, list[Any]]] = []
        self.fails: list[tuple[str, str, list[Any]]] = []
        #: Other ends of an attempt, one script each (a processor's RateLimited).
        self.ends: list[tuple[str, str, Script]] = []
        self.wake = asyncio.Event()
        self.wake.set()  # claim at start
        #: The queue may have ready work (false once a claim came back short).
        self.maybe_work = True
        #: A claim's reply was lost: jobs may be active under our name unknown to us.
        self.check_orphans = False
        self.next_due_ms = -1
        self.idle = asyncio.Event()  # set while the queue looked drained
        self.calls = 0
        #: Tokens whose outcome was sent in a call that failed: the first send
        #: may have landed, and retention may have removed the job since.
        self.resent: set[str] = set()
        #: Set by the worker's close: send what is queued, then return.
        self.stopping = False

    # -- called by the worker when a job does something ------------------------

    def write(self, job_id: str, token: str, script: Script) -> None:
        self.writes.append((job_id, token, script))
        self.wake.set()

    def complete(self, job_id: str, token: str, args: list[Any]) -> None:
        self.completes.append((job_id, token, args))
        self.wake.set()

    def fail(self, job_id: str, token: str, args: list[Any]) -> None:
        self.fails.append((job_id, token, args))
        self.wake.set()

    def want_claim(self) -> None:
        self.maybe_work = True
        self.idle.clear()
        self.wake.set()

    def end(self, job_id: str, token: str, script: Script) -> None:
        self.ends.append((job_id, token, script))
        self.wake.set()

    def pending(self) -> bool:
        return bool(self.writes or self.completes or self.fails or self.ends)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Loop until ``stopping``; a stop never interrupts a call in flight, so
        the reply of a claim is never lost to a cancel."""
        backoff_s = 0.05
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while self.pending() or self._claim_count() > 0 or self.check_orphans:
                try:
                    if self._linger_ok():
                        await self._linger()
                    await self._step()
                    backoff_s = 0.05
                except CONNECTION_ERRORS as exc:
                    reraise_if_cancelling()
                    log.warning("queue %s: Redis unreachable (%s); retrying in %.2fs",
                                self.w.queue_name, exc, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)

    def _linger_ok(self) -> bool:
        """Hold completions back a moment to send more per call, but only while
        the children have queued work to run meanwhile (process mode, under
        load). An idle worker never lingers: request/response latency stays."""
        w = self.w
        if (w.pool is None or self.stopping or self.check_orphans or self.fails or self.writes
                or self.ends):
            return False
        n = len(self.completes)
        return 0 < n < LINGER_BATCH and w.undispatched() >= max(w.concurrency, w.capacity // 2)

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while self._linger_ok():
            self.wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self.wake.wait()
            except TimeoutError:
                return

    def _claim_count(self) -> int:
        if not (self.maybe_work and self.w.can_claim()):
            return 0
        return max(0, self.w.capacity - self.w.busy_count())

    async def _step(self) -> None:
        w = self.w
        if self.check_orphans:
            known = [r.token for r in w.running.values()]
            ids = await w.driver.execute(w.core.script("requeue_worker", w.worker_id, 0, *known))
            if ids:
                log.warning("queue %s: gave back %d job(s) whose claim reply was lost: %s",
                            w.queue_name, len(ids), [codec.text(i) for i in ids])
            self.check_orphans = False
        writes, self.writes = self.writes, []
        completes, self.completes = self.completes, []
        fails, self.fails = self.fails, []
        ends, self.ends = self.ends, []
        claim_n = self._claim_count()
        reqs: list[Script] = [s for _id, _tok, s in writes]
        reqs += [s for _id, _tok, s in ends]
        if fails:
            fail_args: list[Any] = [len(fails)]
            for _id, _tok, args in fails:
                fail_args.extend(args)
            reqs.append(w.core.script("fail", *fail_args))
        if completes or claim_n > 0 or not reqs:
            c_args: list[Any] = [len(completes), claim_n, w.worker_id, w.lease_ms]
            for _id, _tok, args in completes:
                c_args.extend(args)
            c_args.append(w.idle_ms)  # a short claim registers us for hand-offs
            reqs.append(w.core.script("complete", *c_args))
        else:
            claim_n = -1  # no claim in this call
        try:
            self.calls += 1
            replies = await w.driver.execute(reqs[0] if len(reqs) == 1 else Batch(reqs))
        except BaseException:
            # Nothing is lost: put it all back in front, in order. Every
            # script here is fenced or idempotent, so resending is safe.
            self.writes[:0] = writes
            self.completes[:0] = completes
            self.fails[:0] = fails
            self.ends[:0] = ends
            if claim_n > 0:
                self.check_orphans = True
            self.resent.update(tok for _id, tok, _a in (*completes, *fails, *ends))
            raise
        if len(reqs) == 1:
            replies = [replies]
        for (job_id, token, _s), code in zip(writes, replies, strict=False):
            if int(code) < 0:
                w.on_lease_lost(job_id, token, "while writing progress or logs")
        i = len(writes)
        for (job_id, token, s), code in zip(ends, replies[i:], strict=False):
            code = self._resent_ok(token, int(code))
            w.on_acked(job_id, token, code, _END_OUTCOMES.get(s.name, {}).get(code))
        i += len(ends)
        if fails:
            for (job_id, token, _a), code in zip(fails, replies[i], strict=True):
                code = self._resent_ok(token, int(code))
                w.on_acked(job_id, token, code, _FAIL_OUTCOMES.get(code))
            i += 1
        if claim_n >= 0:
            codes, claim = replies[i]
            for (job_id, token, _a), code in zip(completes, codes, strict=True):
                code = self._resent_ok(token, int(code))
                w.on_acked(job_id, token, code, "completed" if code == Code.OK else None)
            self._claimed(claim, claim_n)

    def _resent_ok(self, token: str, code: int) -> int:
        if token in self.resent:
            self.resent.discard(token)
            if code == Code.JOB_NOT_FOUND:
                return Code.OK  # recorded by the first send, then removed by retention
        return code

    def _claimed(self, claim: list[Any], asked: int) -> None:
        self.next_due_ms = int(claim[0])
        jobs = claim[1:]
        if not self.w.claiming:
            # Claimed by a call that was in flight when close began: leave them
            # active under our id; the close gives back all of them at once.
            return
        for job_id, token, fields in jobs:
            self.w.start_job(codec.text(job_id), codec.text(token), fields)
        if asked > 0 and len(jobs) < asked:
            self.maybe_work = False
            self.idle.set()



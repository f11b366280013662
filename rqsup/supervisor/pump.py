"""The pump: every write a worker makes for its jobs, in as few round trips as possible.

Progress, log lines, failures and completions queue up here while a call
is in flight; the next call carries all of them, plus a claim for every
free slot (group commit). Under load one round trip serves many jobs; an
idle worker still answers in one.

Each request of a call is judged on its own reply: a transient Redis error
(out of memory, loading, a failover) puts it back to be sent again; a script
that fails (a bug, or damage the scripts did not foresee) gives back only
the jobs it was for. A call whose reply was lost may have claimed jobs we
never heard of: the next call first gives back every job active under our
id that we do not know (``requeue_worker``; the worker's client never
re-sends a command by itself, so nothing is claimed twice).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from rqsup.errors import Code
from rqsup.queue import codec
from rqsup.queue.connection import REDIS_ERRORS, reraise_if_cancelling
from rqsup.queue.faults import Episode, classify, describe
from rqsup.queue.scripts import Script

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")

#: Group commit under load (process mode): wait up to LINGER_S for up to
#: LINGER_BATCH completions before a call.
LINGER_S = 0.002
LINGER_BATCH = 128

_FAIL_OUTCOMES = {1: "retry", 2: "retry", 3: "failed", 0: "already recorded"}
#: What an end of an attempt other than complete/fail did, by script and code.
_END_OUTCOMES = {
    "rate_limited": {0: "rate limited: back in wait"},
    "move_back": {0: "moved back (delayed or wait) by its processor"},
    "move_to_waiting_children": {1: "waiting for its children", 0: "already recorded",
                                 2: "its children are done: back in wait",
                                 3: "failed (a child failed, or it has no children)"},
}

#: (job id, token, script or arguments) of one queued write.
Item = tuple[str, str, Any]


class Pump:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        #: (job id, token, script request) in the order the processor made them.
        self.writes: list[Item] = []
        self.completes: list[Item] = []
        self.fails: list[Item] = []
        #: Other ends of an attempt, one script each (a processor's RateLimited).
        self.ends: list[Item] = []
        self.wake = asyncio.Event()
        self.wake.set()  # claim at start
        #: The queue may have ready work (false once a claim came back short).
        self.maybe_work = True
        #: A claim's reply was lost: jobs may be active under our name unknown to us.
        self.check_orphans = False
        #: A batched script failed: send the next fails and completes one per
        #: call, so that a failure names its job.
        self.isolate = False
        self.next_due_ms = -1
        self.idle = asyncio.Event()  # set while the queue looked drained
        self.calls = 0
        #: Tokens whose outcome was sent in a call that failed: the first send
        #: may have landed, and retention may have removed the job since.
        self.resent: set[str] = set()
        #: Set by the worker's close: send what is queued, then return.
        self.stopping = False
        # Retried at least every second in an outage: results and claims wait
        # on it, and a failover is over in seconds (a 5 s cap could add 3 s).
        self.episode = Episode(f"queue {worker.queue_name}: writing job outcomes", log,
                               max_s=1.0)

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
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while self.pending() or self._claim_count() > 0 or self.check_orphans:
                try:
                    if self._linger_ok():
                        await self._linger()
                    await self._step()
                    self.episode.ok()
                except REDIS_ERRORS as exc:
                    reraise_if_cancelling()
                    await self.episode.failed(exc)

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

    async def _give_back_orphans(self) -> None:
        w = self.w
        known = [r.token for r in w.running.values()]
        ids = await w.driver.execute(w.core.script("requeue_worker", w.worker_id, 0, *known))
        if ids:
            log.warning("queue %s: gave back %d job(s) whose claim reply was lost: %s",
                        w.queue_name, len(ids), [codec.text(i) for i in ids])
        self.check_orphans = False

    def _build(self, fails: list[Item], completes: list[Item], claim_n: int
               ) -> list[tuple[str, list[Item], Script]]:
        """The calls for this step: (kind, the items it carries, script)."""
        w = self.w
        calls: list[tuple[str, list[Item], Script]] = []
        fail_groups = [[f] for f in fails] if self.isolate else ([fails] if fails else [])
        for group in fail_groups:
            args: list[Any] = [len(group)]
            for _id, _tok, a in group:
                args.extend(a)
            calls.append(("fail", group, w.core.script("fail", *args)))
        groups = [[c] for c in completes] if self.isolate else [completes]
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            n = claim_n if last else 0
            if not group and n <= 0 and not (last and not calls):
                continue
            c_args: list[Any] = [len(group), max(n, 0), w.worker_id, w.lease_ms]
            for _id, _tok, a in group:
                c_args.extend(a)
            c_args.append(w.idle_ms)  # a short claim registers us for hand-offs
            calls.append(("complete" if n <= 0 else "claim", group, w.core.script("complete",
                                                                                *c_args)))
        self.isolate = False
        return calls

    async def _step(self) -> None:
        w = self.w
        if self.check_orphans:
            await self._give_back_orphans()
        writes, self.writes = self.writes, []
        completes, self.completes = self.completes, []
        fails, self.fails = self.fails, []
        ends, self.ends = self.ends, []
        claim_n = self._claim_count()
        calls: list[tuple[str, list[Item], Script]] = [("write", [i], i[2]) for i in writes]
        calls += [("end", [i], i[2]) for i in ends]
        calls += self._build(fails, completes, claim_n)
        try:
            self.calls += 1
            replies = await w.driver.execute_each([c[2] for c in calls])
        except BaseException:
            # Nothing is lost: put it all back in front, in order. Every
            # script here is fenced or idempotent, so resending is safe; a
            # claim that may have landed is given back by the orphan check.
            self.writes[:0] = writes
            self.completes[:0] = completes
            self.fails[:0] = fails
            self.ends[:0] = ends
            if any(kind == "claim" for kind, _i, _s in calls):
                self.check_orphans = True
            self.resent.update(tok for _id, tok, _a in (*completes, *fails, *ends))
            raise
        retry: list[BaseException] = []
        for (kind, items, script), reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                self._refused(kind, items, script, reply, retry)
            else:
                self._replied(kind, items, script, reply, claim_n)
        if retry:
            raise retry[0]  # transient: the loop waits (logged once) and sends again

    def _refused(self, kind: str, items: list[Item], script: Script, exc: BaseException,
                 retry: list[BaseException]) -> None:
        """One request of a call came back with an error."""
        w = self.w
        fault = classify(exc)
        if kind in ("claim", "complete") or fault.transient:
            # A failed claim script may have claimed some jobs before it failed.
            self.check_orphans = self.check_orphans or kind == "claim"
        if fault.transient:
            queue = {"write": self.writes, "end": self.ends, "fail": self.fails,
                     "complete": self.completes, "claim": self.completes}[kind]
            queue[:0] = items
            retry.append(exc)
            return
        # Not transient: a script that fails the same way each time. A batch
        # is split up to find the job; a single job is given back.
        if len(items) > 1:
            log.error("queue %s: %s script failed for %d jobs (%s); sending them one by one",
                      w.queue_name, script.name, len(items), describe(exc))
            (self.fails if kind == "fail" else self.completes)[:0] = items
            self.isolate = True
            return
        for job_id, token, _a in items:
            r = w.running.get(token)
            if r is not None:
                w.abandon(r, f"Redis refused its {script.name} ({describe(exc)})")
            else:
                log.error("queue %s: job %s: %s refused: %s", w.queue_name, job_id,
                          script.name, describe(exc))
        if kind == "claim":
            retry.append(exc)  # the claim itself fails: back off before the next

    def _replied(self, kind: str, items: list[Item], script: Script, reply: Any,
                 claim_n: int) -> None:
        w = self.w
        if kind == "write":
            job_id, token, _s = items[0]
            code = int(reply)
            r = w.running.get(token)
            if code < 0 and r is not None:
                w.on_lease_lost(r, "while writing progress or logs" if code != Code.MALFORMED
                                else "(the job is malformed in Redis and was set aside)")
            return
        if kind == "end":
            job_id, token, s = items[0]
            code = self._resent_ok(token, int(reply))
            w.on_acked(w.running.get(token), job_id, token, code,
                       _END_OUTCOMES.get(s.name, {}).get(code))
            return
        if kind == "fail":
            for (job_id, token, _a), code in zip(items, reply, strict=True):
                code = self._resent_ok(token, int(code))
                w.on_acked(w.running.get(token), job_id, token, code, _FAIL_OUTCOMES.get(code))
            return
        codes, claim = reply
        for (job_id, token, _a), code in zip(items, codes, strict=True):
            code = self._resent_ok(token, int(code))
            w.on_acked(w.running.get(token), job_id, token, code,
                       "completed" if code == Code.OK else None)
        self._claimed(claim, claim_n if kind == "claim" else 0)

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
            if not self.idle.is_set() and self.w.events.active and not jobs:
                self.w.events.emit("drained")
            self.idle.set()

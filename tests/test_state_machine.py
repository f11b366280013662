"""Stateful test: job state transitions against a plain Python model.

Hypothesis drives one queue through adds, claims, completions and failures
(batched, with current, stale, made-up and re-used tokens), lease renewals,
a worker giving its jobs back, and the admin operations (promote, remove,
retry, change_priority, pause/resume, drain). The model predicts every
reply: which ids a claim takes and their fencing tokens, the code of every
complete/fail entry, which ids a renew reports lost, and the errors admin
calls raise. After every step the whole queue is compared with the model:
counts(), each job's state(), the exact order of wait and prioritized, and
priority, attempt counters and token in each job hash.

Delays are an hour and leases 30 s, so timing never matters: nothing
becomes due and no lease expires during an example.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rqsup import Job, JobNotFound, JobStateError, Queue
from rqsup.queue import codec
from rqsup.queue.core import STATES
from rqsup.queue.record import fields_of
from rqsup.queue.scripts import Batch, Command

WORKER = "worker-1"
LEASE_MS = 30_000
LONG_DELAY_S = 3600
LONG_DELAY_MS = LONG_DELAY_S * 1000
KEEP = (-1, -1)  # keep_count, keep_age_ms: keep finished jobs forever

# Script return codes (common.lua).
OK, NOT_FOUND, LEASE_LOST, NOT_ACTIVE = 0, -1, -2, -3
RETRY_NOW, RETRY_LATER, FAILED = 1, 2, 3

PRIORITIES = st.sampled_from([0, 1, 2, 5])
JOB_SPECS = st.fixed_dictionaries({
    "priority": PRIORITIES, "lifo": st.booleans(), "delayed": st.booleans(),
    "attempts": st.integers(1, 3),
})
_queue_names = itertools.count()


@dataclass
class MJob:
    """What the model knows of one job."""

    id: str
    state: str  # one of STATES, or "missing" once removed/drained
    priority: int
    attempts: int
    attempts_made: int = 0
    attempts_started: int = 0
    stalled_count: int = 0
    #: The job hash's token field: set by a claim, kept when the attempt ends
    #: (so the same token can repeat its call idempotently), dropped by retry.
    token: str | None = None
    #: How the holder of `token` ended its attempt: "complete" or "fail".
    ended_by: str | None = None
    #: Every token this job was ever claimed with.
    tokens: list[str] = field(default_factory=list)


class JobStateMachine(RuleBasedStateMachine):
    redis_url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.q = Queue(f"sm{next(_queue_names)}", self.redis_url)
        self.jobs: dict[str, MJob] = {}
        #: Ready FIFO/LIFO jobs, next to be claimed first.
        self.wait: list[str] = []
        #: Prioritized jobs: id -> sort key (priority, +/- insertion counter).
        self.prio: dict[str, tuple[int, int]] = {}
        self.pc = 0  # the priority counter (FIFO/LIFO inside one priority)
        self.next_id = 0  # auto job ids
        self.fence = 0  # fencing tokens
        self.paused = False

    def teardown(self) -> None:
        self.q.obliterate(force=True)
        self.q.close()

    # -- model helpers ---------------------------------------------------------

    def ids_in(self, *states: str) -> list[str]:
        return sorted((j.id for j in self.jobs.values() if j.state in states), key=int)

    def existing(self) -> list[str]:
        return self.ids_in(*STATES)

    def prio_order(self) -> list[str]:
        return sorted(self.prio, key=lambda i: self.prio[i])

    def push_ready(self, job: MJob, priority: int, front: bool) -> None:
        """common.lua push_ready: priority > 0 -> prioritized, else the wait list."""
        if priority > 0:
            self.pc += 1
            self.prio[job.id] = (priority, -self.pc if front else self.pc)
            job.state = "prioritized"
        else:
            if front:
                self.wait.insert(0, job.id)
            else:
                self.wait.append(job.id)
            job.state = "wait"

    def unlink(self, job: MJob) -> None:
        if job.state == "wait":
            self.wait.remove(job.id)
        elif job.state == "prioritized":
            del self.prio[job.id]

    def model_claim(self, n: int) -> list[tuple[str, str]]:
        """claim_jobs: wait first (pop end), then prioritized; none while paused."""
        if self.paused or n <= 0:
            return []
        ids = self.wait[:n]
        del self.wait[:n]
        for i in self.prio_order()[: n - len(ids)]:
            del self.prio[i]
            ids.append(i)
        out = []
        for i in ids:
            job = self.jobs[i]
            self.fence += 1
            token = str(self.fence)
            job.state = "active"
            job.token = token
            job.ended_by = None
            job.tokens.append(token)
            job.attempts_started += 1
            out.append((i, token))
        return out

    def check_lease(self, job_id: str, token: str) -> int:
        """common.lua check_lease: 1 held, 0 already ended by it, else a code."""
        job = self.jobs.get(job_id)
        if job is None or job.state == "missing":
            return NOT_FOUND
        if job.token == token:
            return 1 if job.state == "active" else OK
        return LEASE_LOST if job.state == "active" else NOT_ACTIVE

    def expected_refusal(self, job_id: str, token: str, operation: str) -> int:
        """The code a complete/fail that does not hold the lease must get.

        A token that already ended the attempt the same way gets 0 (the call is
        a retry, idempotent). complete.lua promises 0 only "when this token
        already completed it", so a token that *failed* the job must not be
        told its completion was recorded (and vice versa): that is -3.
        """
        code = self.check_lease(job_id, token)
        assert code != 1, "not a refusal"
        if code == OK and self.jobs[job_id].ended_by != operation:
            return NOT_ACTIVE
        return code

    def model_complete(self, job_id: str, token: str) -> int:
        """complete.lua, one entry: the lease holder moves the job to completed."""
        if self.check_lease(job_id, token) != 1:
            return self.expected_refusal(job_id, token, "complete")
        job = self.jobs[job_id]
        job.state = "completed"
        job.attempts_made += 1
        job.ended_by = "complete"
        return OK

    def model_fail(self, job_id: str, token: str, delay: int) -> int:
        """fail.lua: retry (now or delayed) while attempts remain and a retry is asked."""
        if self.check_lease(job_id, token) != 1:
            return self.expected_refusal(job_id, token, "fail")
        job = self.jobs[job_id]
        job.attempts_made += 1
        job.ended_by = "fail"
        if delay >= 0 and job.attempts_made < job.attempts:
            if delay > 0:
                job.state = "delayed"
                return RETRY_LATER
            self.push_ready(job, job.priority, False)
            return RETRY_NOW
        job.state = "failed"
        return FAILED

    def delete(self, job: MJob) -> None:
        self.unlink(job)
        job.state = "missing"

    # -- driving the real queue --------------------------------------------------

    def run(self, script: str, *args: Any) -> Any:
        return self.q._driver.execute(self.q.core.script(script, *args))

    def real_job(self, job_id: str) -> Job:
        job = self.q.get_job(job_id)
        assert job is not None, f"job {job_id} is missing"
        return job

    def real_claim(self, n: int) -> list[tuple[str, str]]:
        reply = self.run("claim", n, WORKER, LEASE_MS)
        return self.check_claim_reply(reply)

    def check_claim_reply(self, reply: list[Any]) -> list[tuple[str, str]]:
        next_due = int(reply[0])
        has_delayed = any(j.state == "delayed" for j in self.jobs.values())
        assert (next_due >= 0) == has_delayed, (next_due, has_delayed)
        out = []
        for job_id, token, raw in reply[1:]:
            job_id, token, fields = codec.text(job_id), codec.text(token), fields_of(raw)
            assert fields["token"] == token
            assert fields["worker"] == WORKER
            out.append((job_id, token))
        return out

    def do_claim(self, real: list[tuple[str, str]], n: int) -> None:
        expected = self.model_claim(n)
        assert real == expected, f"claim {n}: got {real}, model expected {expected}"

    # -- rules: producing ----------------------------------------------------------

    @initialize(specs=st.lists(JOB_SPECS, min_size=1, max_size=8), claim_n=st.integers(0, 3))
    def add_some(self, specs: list[dict[str, Any]], claim_n: int) -> None:
        """Start with some jobs, a few of them already claimed (so that the worker
        rules have something to work on from the first step)."""
        for spec in specs:
            self.add(**spec)
        if claim_n:
            self.do_claim(self.real_claim(claim_n), claim_n)

    @rule(priority=PRIORITIES, lifo=st.booleans(), delayed=st.booleans(),
          attempts=st.integers(1, 3))
    def add_one(self, priority: int, lifo: bool, delayed: bool, attempts: int) -> None:
        self.add(priority, lifo, delayed, attempts)

    def add(self, priority: int, lifo: bool, delayed: bool, attempts: int) -> None:
        job = self.q.add(
            "job", {"n": self.next_id}, priority=priority, lifo=lifo,
            delay=LONG_DELAY_S if delayed else 0, attempts=attempts,
            remove_on_complete=False, remove_on_fail=False,
        )
        self.next_id += 1
        assert job.id == str(self.next_id)
        m = MJob(job.id, "delayed", priority, attempts)
        self.jobs[job.id] = m
        if not delayed:
            self.push_ready(m, priority, lifo)

    # -- rules: a worker ---------------------------------------------------------------

    @precondition(lambda self: self.wait or self.prio)
    @rule(n=st.integers(1, 3))
    def claim(self, n: int) -> None:
        """Claim when jobs are ready (while paused, the claim must take none)."""
        self.do_claim(self.real_claim(n), n)

    def describe(self, pairs: list[tuple[str, str]]) -> str:
        out = []
        for job_id, token in pairs:
            j = self.jobs.get(job_id)
            out.append(f"(job {job_id} [{j.state if j else 'missing'}, hash token "
                       f"{j.token if j else None}, ended by {j.ended_by if j else None}], "
                       f"token {token})")
        return ", ".join(out)

    def complete_batch(self, pairs: list[tuple[str, str]], claim_n: int) -> None:
        """complete.lua with one entry per pair, then a claim of claim_n jobs."""
        before = self.describe(pairs)
        args = [x for job_id, token in pairs for x in (job_id, token, '"ok"', *KEEP)]
        codes, claim = self.run("complete", len(pairs), claim_n, WORKER, LEASE_MS, *args)
        expected = [self.model_complete(job_id, token) for job_id, token in pairs]
        assert [int(c) for c in codes] == expected, (
            f"complete {before}: got {codes}, expected {expected}")
        self.do_claim(self.check_claim_reply(claim), claim_n)

    def fail_batch(self, entries: list[tuple[str, str, int]]) -> None:
        """fail.lua with one (id, token, retry_delay_ms) entry each."""
        before = self.describe([(i, t) for i, t, _d in entries])
        args = [x for job_id, token, delay in entries
                for x in (job_id, token, "boom", "ValueError", "tb", delay, *KEEP, "")]
        codes = self.run("fail", len(entries), *args)
        expected = [self.model_fail(*e) for e in entries]
        assert [int(c) for c in codes] == expected, (
            f"fail {before} (delays {[d for _i, _t, d in entries]}): "
            f"got {codes}, expected {expected}")

    def current_pairs(self, data: st.DataObject) -> list[tuple[str, str]]:
        """1..3 active jobs with their current token (a job may repeat: the repeat
        finds the attempt already ended by its own token)."""
        active = [(i, self.jobs[i].token or "") for i in self.ids_in("active")]
        return data.draw(st.lists(st.sampled_from(active), min_size=1, max_size=3), label="jobs")

    # The worker rules take a single `data` argument: Hypothesis orders rules by
    # their number of arguments and favours the first ones, and these are the
    # rules that reach deep states.

    @precondition(lambda self: self.ids_in("active"))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        """Complete 1..3 active jobs in one call (maybe with a stale entry among
        them), and claim 0..2 more jobs in the same call."""
        pairs = self.current_pairs(data)
        if data.draw(st.booleans(), label="with a stale entry"):
            pairs.insert(data.draw(st.integers(0, len(pairs)), label="at"),
                         self.stale_target(data))
        self.complete_batch(pairs, data.draw(st.integers(0, 2), label="claim_n"))

    @precondition(lambda self: self.ids_in("active"))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        """Fail 1..3 active jobs in one call, each asking for a retry now (0),
        later (an hour) or never (-1); maybe with a stale entry among them."""
        delays = st.sampled_from([0, LONG_DELAY_MS, -1])
        entries = [(i, t, data.draw(delays, label=f"retry delay of {i}"))
                   for i, t in self.current_pairs(data)]
        if data.draw(st.booleans(), label="with a stale entry"):
            entries.insert(data.draw(st.integers(0, len(entries)), label="at"),
                           (*self.stale_target(data), 0))
        self.fail_batch(entries)

    def stale_target(self, data: st.DataObject) -> tuple[str, str]:
        """A (job id, token) whose token does not hold the job's lease: a token from
        an earlier claim of the job, a made-up token, or a made-up job id."""
        claimed = [j for j in self.jobs.values() if j.tokens]
        kind = data.draw(st.sampled_from(["old-token", "made-up-token", "made-up-id"]),
                         label="kind")
        if kind == "old-token" and claimed:
            job = data.draw(st.sampled_from(claimed), label="job")
            old = [t for t in job.tokens if t != job.token] or ["0"]
            return job.id, data.draw(st.sampled_from(old), label="token")
        if kind == "made-up-id":
            return "no-such-job", "1"
        job_id = data.draw(st.sampled_from(sorted(self.jobs, key=int) or ["1"]), label="job")
        return job_id, "999999"

    @precondition(lambda self: any(j.tokens for j in self.jobs.values()))
    @rule(data=st.data(), operation=st.sampled_from(["complete", "fail"]))
    def stale_token(self, data: st.DataObject, operation: str) -> None:
        """A token that does not hold the lease: refused, nothing changes."""
        job_id, token = self.stale_target(data)
        if operation == "complete":
            self.complete_batch([(job_id, token)], 0)
        else:
            self.fail_batch([(job_id, token, 0)])

    @precondition(lambda self: any(j.ended_by and j.state != "missing"
                                   for j in self.jobs.values()))
    @rule(data=st.data(), operation=st.sampled_from(["complete", "fail"]))
    def reuse_ending_token(self, data: st.DataObject, operation: str) -> None:
        """The token that ended an attempt calls complete or fail again (later)."""
        ended = sorted((j.id for j in self.jobs.values() if j.ended_by and j.state != "missing"),
                       key=int)
        job = self.jobs[data.draw(st.sampled_from(ended), label="job")]
        assert job.token is not None
        if operation == "complete":
            self.complete_batch([(job.id, job.token)], 0)
        else:
            self.fail_batch([(job.id, job.token, 0)])

    @precondition(lambda self: self.ids_in("active"))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        pairs: list[tuple[str, str]] = []
        for job_id in self.ids_in("active"):
            if data.draw(st.booleans(), label=f"renew {job_id}"):
                pairs.append((job_id, self.jobs[job_id].token or ""))
        if data.draw(st.booleans(), label="add a stale pair"):
            pairs.append(self.stale_target(data))
        args = [x for pair in pairs for x in (*pair, "4242")]
        lost = [codec.text(i) for i in self.run("renew", LEASE_MS, *args)[0]]
        expected = [t for i, t in pairs if self.check_lease(i, t) != 1]  # tokens, not ids
        assert lost == expected

    @precondition(lambda self: self.ids_in("active"))
    @rule(data=st.data(), as_stall=st.booleans())
    def requeue_worker(self, data: st.DataObject, as_stall: bool) -> None:
        """The worker gives back the jobs it no longer runs: each goes to the front
        of wait (or of its priority band), its token no longer valid."""
        active = self.ids_in("active")
        running = [i for i in active if data.draw(st.booleans(), label=f"{i} still running")]
        keep = [self.jobs[i].token or "" for i in running]
        # Given back in lease-deadline order, which the model does not track: read it.
        order = [codec.text(i) for i in self.q.client.zrange(self.q.core.keys.active, 0, -1)]
        assert sorted(order, key=int) == active
        got = [codec.text(i) for i in self.run("requeue_worker", WORKER, int(as_stall), *keep)]
        expected = [i for i in order if i not in running]
        assert got == expected
        for job_id in expected:
            job = self.jobs[job_id]
            job.token = None
            job.ended_by = None
            job.stalled_count += as_stall
            self.push_ready(job, job.priority, True)

    # -- rules: admin ------------------------------------------------------------------

    @precondition(lambda self: self.ids_in("delayed"))
    @rule(data=st.data())
    def promote(self, data: st.DataObject) -> None:
        job = self.jobs[data.draw(st.sampled_from(self.ids_in("delayed")), label="job")]
        self.real_job(job.id).promote()
        self.push_ready(job, job.priority, False)

    @precondition(lambda self: self.ids_in("wait", "prioritized", "delayed", "completed", "failed"))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        removable = self.ids_in("wait", "prioritized", "delayed", "completed", "failed")
        job = self.jobs[data.draw(st.sampled_from(removable), label="job")]
        self.real_job(job.id).remove()
        self.delete(job)

    @precondition(lambda self: self.ids_in("failed"))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job = self.jobs[data.draw(st.sampled_from(self.ids_in("failed")), label="job")]
        reset_made = data.draw(st.booleans(), label="reset attempts_made")
        reset_started = data.draw(st.booleans(), label="reset attempts_started")
        self.real_job(job.id).retry(reset_attempts_made=reset_made,
                                    reset_attempts_started=reset_started)
        if reset_made:
            job.attempts_made = 0
        if reset_started:
            job.attempts_started = 0
        job.stalled_count = 0
        job.token = None
        job.ended_by = None
        self.push_ready(job, job.priority, False)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), operation=st.sampled_from(["promote", "retry", "remove"]))
    def admin_refused(self, data: st.DataObject, operation: str) -> None:
        """promote a job that is not delayed, retry one that is not failed, remove an
        active one: JobStateError naming the state; a removed job: JobNotFound."""
        allowed = {"promote": "delayed", "retry": "failed"}.get(operation)
        wrong = [i for i in sorted(self.jobs, key=int)
                 if self.jobs[i].state != allowed
                 and (operation != "remove" or self.jobs[i].state in ("active", "missing"))]
        if not wrong:
            return
        job = self.jobs[data.draw(st.sampled_from(wrong), label="job")]
        op = {
            "promote": self.q.core.op_promote(job.id),
            "retry": self.q.core.op_retry(job.id, "failed"),
            "remove": self.q.core.op_remove(job.id),
        }[operation]
        expected_error = JobNotFound if job.state == "missing" else JobStateError
        with pytest.raises(expected_error) as err:
            self.q._driver.drive(op)
        if isinstance(err.value, JobStateError):
            assert err.value.state == job.state

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), priority=PRIORITIES, lifo=st.booleans())
    def change_priority(self, data: st.DataObject, priority: int, lifo: bool) -> None:
        """A ready job moves now; any other keeps the priority for when it is next ready."""
        job = self.jobs[data.draw(st.sampled_from(self.existing()), label="job")]
        self.real_job(job.id).change_priority(priority, lifo)
        job.priority = priority
        if job.state in ("wait", "prioritized"):
            self.unlink(job)
            self.push_ready(job, priority, lifo)

    @rule(paused=st.booleans())
    def set_paused(self, paused: bool) -> None:
        if paused:
            self.q.pause()
        else:
            self.q.resume()
        self.paused = paused

    @precondition(lambda self: self.ids_in("wait", "prioritized", "delayed"))
    @rule(delayed=st.booleans())
    def drain(self, delayed: bool) -> None:
        states = ("wait", "prioritized", "delayed") if delayed else ("wait", "prioritized")
        doomed = self.ids_in(*states)
        assert self.q.drain(delayed=delayed) == len(doomed)
        for job_id in doomed:
            self.delete(self.jobs[job_id])

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def queue_matches_model(self) -> None:
        counts = self.q.counts()
        expected = {s: len(self.ids_in(s)) for s in STATES}
        assert counts == expected, f"counts {counts} != model {expected}"
        assert self.q.is_paused() == self.paused

        ids = sorted(self.jobs, key=int)
        if not ids:
            return
        states = self.q._driver.drive(self.q.core.op_states(ids))
        assert dict(zip(ids, states, strict=True)) == {i: self.jobs[i].state for i in ids}

        assert [j.id for j in self.q.get_jobs("wait", asc=True)] == self.wait
        assert [j.id for j in self.q.get_jobs("prioritized", asc=True)] == self.prio_order()

        keys = self.q.core.keys
        hashes = self.q._driver.execute(Batch([Command(("HGETALL", keys.job(i))) for i in ids]))
        for job_id, raw in zip(ids, hashes, strict=True):
            job, fields = self.jobs[job_id], fields_of(raw)
            if job.state == "missing":
                assert fields == {}, f"job {job_id} was deleted but its hash is {fields}"
                continue
            got = (int(fields["priority"]), int(fields["attempts_made"]),
                   int(fields.get("attempts_started", 0)), int(fields.get("stalled_count", 0)),
                   fields.get("token"))
            want = (job.priority, job.attempts_made, job.attempts_started, job.stalled_count,
                    job.token)
            assert got == want, (
                f"job {job_id}: (priority, made, started, stalled, token) {got} != {want}")

        # And through the public accessor, job by job.
        for job_id in ids:
            job = Job(job_id, {}, self.q)
            if self.jobs[job_id].state == "missing":
                with pytest.raises(JobNotFound):
                    job.state()
            else:
                assert job.state() == self.jobs[job_id].state, f"state of job {job_id}"


def test_job_state_machine(redis_url: str) -> None:
    JobStateMachine.redis_url = redis_url
    run_state_machine_as_test(
        JobStateMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # The explain phase re-runs a failure under tracing: minutes for
            # this test, past the suite's 120 s timeout.
            phases=[p for p in Phase if p is not Phase.explain],
        ),
    )

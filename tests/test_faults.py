"""Faults: stale tokens, lost leases, stalled jobs, Redis killed under a running worker."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from rqsup import AsyncQueue, Queue
from rqsup.errors import Code
from rqsup.redis_server import RedisServer
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import await_until, wait_until


def script(q: Queue, name: str, *args: Any) -> Any:
    return q._driver.execute(q.core.script(name, *args))


def claim(q: Queue, n: int = 1, lease_ms: int = 30_000, worker: str = "w") -> list[tuple[str, str]]:
    return [(i.decode(), t.decode()) for i, t, _ in script(q, "claim", n, worker, lease_ms)[1:]]


def expire_leases(q: Queue) -> None:
    """Make every lease look expired (as if its holder stopped renewing long ago)."""
    for member in q.client.zrange(q.core.keys.active, 0, -1):
        q.client.zadd(q.core.keys.active, {member: 0})


def test_a_stale_token_cannot_complete_fail_renew_or_report(redis_url: str) -> None:
    # Given a job claimed by A, whose lease expired and which B then claimed
    q = Queue("fence", redis_url)
    job = q.add("x", remove_on_complete=False)
    [(_, token_a)] = claim(q)
    expire_leases(q)
    assert script(q, "sweep_stalled", 0, 5, 0, 100, -1, -1)[1] == [job.id.encode()]
    [(_, token_b)] = claim(q)
    assert int(token_b) > int(token_a)  # fencing tokens only grow
    # When A tries to write, Then every write is refused and nothing changes
    codes, _ = script(q, "complete", 1, 0, "w", 1000, job.id, token_a, '"late"', -1, -1)
    assert codes == [Code.LEASE_LOST]
    assert script(q, "fail", 1, job.id, token_a, "late", "E", "", 0, -1, -1, "") == [
        Code.LEASE_LOST]
    assert script(q, "renew", 1000, job.id, token_a, "") == [[job.id.encode()], []]
    assert script(q, "progress", job.id, token_a, "50") == Code.LEASE_LOST
    assert job.state() == "active"
    # And B's writes go through; a repeat of B's completion is harmless
    assert script(q, "complete", 1, 0, "w", 1000, job.id, token_b, '"ok"', -1, -1)[0] == [0]
    assert script(q, "complete", 1, 0, "w", 1000, job.id, token_b, '"again"', -1, -1)[0] == [0]
    done = q.get_job(job.id)
    assert done is not None and done.return_value == "ok" and done.attempts_made == 1
    # A made-up token and an unknown job are refused with their own codes
    assert script(q, "progress", job.id, "999", "1") == Code.JOB_NOT_ACTIVE
    assert script(q, "progress", "nope", "1", "1") == Code.JOB_NOT_FOUND


def test_stall_limit_fails_a_job_that_keeps_stalling(redis_url: str) -> None:
    q = Queue("stall", redis_url)
    job = q.add("x", remove_on_fail=False)
    for _ in range(2):
        claim(q)
        expire_leases(q)
        script(q, "sweep_stalled", 0, 1, 0, 100, -1, -1)
    rec = q.get_job(job.id)
    assert rec is not None and job.state() == "failed"
    assert rec.stalled_count == 2 and "max_stalled_count=1" in (rec.failed_reason or "")
    # the stall-check key makes a second sweep inside the interval a no-op
    assert script(q, "sweep_stalled", 60_000, 1, 0, 100, -1, -1)[0] == 1
    assert script(q, "sweep_stalled", 60_000, 1, 0, 100, -1, -1)[0] == 0


def test_a_dead_workers_jobs_are_recovered_by_a_live_worker(redis_url: str) -> None:
    # Given jobs claimed by a worker that died (it never renews or completes)
    async def proc(job: ActiveJob) -> str:
        return f"recovered {job.id}"

    async def main() -> None:
        q = AsyncQueue("dead", redis_url)
        jobs = await q.add_bulk([("x", i) for i in range(3)])
        sq = Queue("dead", redis_url)
        claim(sq, 3, lease_ms=300, worker="dead-worker")
        # When a live worker sweeps stalls frequently
        w = Worker("dead", proc, url=redis_url, stall_interval_s=0.2)
        t = asyncio.create_task(w.run())
        # Then every job completes once its lease expires
        for job in jobs:
            assert await job.wait(10) == f"recovered {job.id}"
        rec = await q.get_job(jobs[0].id)
        assert rec is not None and rec.stalled_count == 1
        await w.close()
        await t

    asyncio.run(main())


def test_a_lost_lease_cancels_the_running_coroutine(redis_url: str) -> None:
    cancelled = asyncio.Event()

    async def proc(job: ActiveJob) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def main() -> None:
        q = AsyncQueue("lost", redis_url)
        job = await q.add("x")
        w = Worker("lost", proc, url=redis_url, lease_s=1.5, renew_interval_s=0.2,
                   stall_interval_s=60)
        t = asyncio.create_task(w.run())
        sq = Queue("lost", redis_url)
        await await_until(lambda: sq.get_job(job.id).state() == "active", "job active")  # type: ignore[union-attr]
        # another party takes the job over (its lease looked expired to a sweeper)
        expire_leases(sq)
        script(sq, "sweep_stalled", 0, 5, 0, 100, -1, -1)
        [(_, other_token)] = claim(sq, worker="other")
        await asyncio.wait_for(cancelled.wait(), 5)
        assert w.running == {}
        # the job still belongs to the other holder, untouched
        rec = await q.get_job(job.id)
        assert rec is not None and rec.raw["token"] == other_token and rec.return_value is None
        await w.close()
        await t

    asyncio.run(main())


def test_redis_killed_and_restarted_under_a_running_worker(private_redis: RedisServer) -> None:
    url = private_redis.url
    runs: Counter[str] = Counter()
    n_jobs = 300

    async def proc(job: ActiveJob) -> int:
        runs[job.id] += 1
        await asyncio.sleep(0.002)
        return int(job.data)

    async def main() -> None:
        q = Queue("chaos", url)
        q.add_bulk([("x", i, {"remove_on_complete": False}) for i in range(n_jobs)])
        w = Worker("chaos", proc, url=url, concurrency=8, lease_s=5, stall_interval_s=0.5)
        t = asyncio.create_task(w.run())
        await await_until(lambda: len(runs) > n_jobs // 4, "a quarter of the jobs ran")
        # When Redis dies mid-run and comes back (same data: append-only file)
        private_redis.kill()
        await asyncio.sleep(0.3)  # the outage itself: the worker must ride it out
        private_redis.start()
        # Then every job completes, each exactly once in Redis
        q2 = Queue("chaos", url)
        await await_until(lambda: q2.counts()["completed"] == n_jobs, "all jobs completed", 60)
        await w.close()
        await t
        counts = q2.counts()
        assert counts["completed"] == n_jobs and counts["active"] == counts["wait"] == 0
        completions = Counter(
            e[1][b"id"].decode()
            for e in q2.client.xrange(q2.core.keys.events)
            if e[1][b"event"] == b"completed"
        )
        assert len(completions) == n_jobs and max(completions.values()) == 1
        # at-least-once: a rerun happens only for jobs the outage interrupted
        assert sum(runs.values()) - n_jobs <= w.concurrency * 2

    asyncio.run(main())


def test_priority_extremes_keep_fifo_and_keep_logs_zero(redis_url: str) -> None:
    q = Queue("edge", redis_url)
    top = 2**21
    ids = [q.add("x", priority=top).id for _ in range(3)]
    assert [i for i, _ in claim(q, 3)] == ids
    job = q.add("y", keep_logs=0)
    [(jid, tok)] = claim(q)
    assert script(q, "log", jid, tok, 0, 1, "dropped") == 0
    assert job.logs() == []


def test_claim_reply_lost_jobs_are_given_back(redis_url: str) -> None:
    # A worker whose claim reply was lost holds jobs it does not know about;
    # requeue_worker gives back those whose tokens it does not run.
    q = Queue("orph", redis_url)
    a, b = q.add("x"), q.add("x")
    [(_ida, toka), (idb, _tokb)] = claim(q, 2, worker="w1")
    given = script(q, "requeue_worker", "w1", 0, toka)
    assert given == [idb.encode()] and b.state() == "wait" and a.state() == "active"
    wait_until(lambda: q.get_job(idb) is not None, "job b kept")
    assert q.get_job(idb).stalled_count == 0  # type: ignore[union-attr]


def test_a_processor_raising_timeouterror_fails_its_job(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> None:
        raise TimeoutError("upstream timed out")

    async def main() -> None:
        q = AsyncQueue("te", redis_url)
        w = Worker("te", proc, url=redis_url)
        t = asyncio.create_task(w.run())
        from rqsup import JobFailed

        with pytest.raises(JobFailed, match="upstream timed out"):
            await q.call("x", None, timeout=10)
        await w.close()
        await t

    asyncio.run(main())


def test_a_reused_job_id_never_gets_the_old_outcome(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        return job.data

    async def main() -> None:
        q = AsyncQueue("reuse", redis_url)
        w = Worker("reuse", proc, url=redis_url)
        t = asyncio.create_task(w.run())
        assert await q.call("x", "first", timeout=10, job_id="req-1") == "first"
        await w.close()
        await t
        await (await q.get_job("req-1")).remove()  # type: ignore[union-attr]
        # no worker runs now: the new job must not be answered from memory
        with pytest.raises(TimeoutError):
            await q.call("x", "second", timeout=0.5, job_id="req-1")

    asyncio.run(main())

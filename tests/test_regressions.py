"""Regression tests for bugs a review of the issue-4 Lua changes found: manual
limits hidden by an open rate window, a rate-limited job nobody was woken for,
quadratic removal of a big flow parent, and stale hand-offs after
requeue_worker. Each failed before its fix."""

from __future__ import annotations

import asyncio
from typing import Any

from rqsup import AsyncQueue, FlowProducer, Queue
from rqsup.supervisor import Worker


def claim(q: Queue, n: int, worker: str = "w1", idle_ms: int = 0,
          lease_ms: int = 30_000) -> tuple[int, list[tuple[str, str]]]:
    reply = q._driver.execute(q.core.script("claim", n, worker, lease_ms, idle_ms))
    return int(reply[0]), [(i.decode(), t.decode()) for i, t, _f in reply[1:]]


# -- 1. a manual limit is ignored while a longer rate-limit window is open ----------

def test_manual_limit_stops_claims_even_inside_an_open_rate_window(redis_url: str) -> None:
    """limits.lua:37 (and rate_limited.lua:20) only SET the 'manual' limiter when
    PTTL(limiter) < delay. While a counting window of the rate limit is open with
    more time left than the delay, the manual limit is silently dropped and claims
    go on (up to the rate limit)."""
    q = Queue("rv-manual", redis_url)
    q.set_rate_limit(100, 60.0)
    q.add_bulk([("x", i) for i in range(10)])
    assert len(claim(q, 1)[1]) == 1  # opens a 60 s window (1 of 100 used)
    info = q.rate_limit(1.0)  # "stop claiming for 1 s" (an upstream 429)
    assert info["limited_for_s"] > 0, info
    wait_ms, got = claim(q, 5)
    assert got == [] and 0 < wait_ms <= 1000, (wait_ms, got)


def test_rate_limited_inside_an_open_rate_window_stops_the_queue(redis_url: str) -> None:
    """Same bug through rate_limited.lua (a processor raising RateLimited)."""
    q = Queue("rv-manual2", redis_url)
    q.set_rate_limit(100, 60.0)
    q.add_bulk([("x", i) for i in range(10)])
    (jid, tok), = claim(q, 1)[1]
    assert q._driver.execute(q.core.script("rate_limited", jid, tok, 1000)) == 0
    wait_ms, got = claim(q, 5)
    assert got == [] and 0 < wait_ms <= 1000, (wait_ms, got)


# -- 2. RateLimited never wakes a worker: the job waits a whole block timeout ----------

def test_rate_limited_job_is_announced_to_blocked_workers(redis_url: str) -> None:
    """rate_limited.lua pushes the job back to wait without wake(): workers
    blocked on the marker (the worker whose last claim was short, every other idle
    worker) are not told, so the job sits for up to block_timeout_s (default 5 s)
    instead of the limit's delay."""
    q = Queue("rv-rlwake", redis_url)
    q.add("x", 1)
    (jid, tok), = claim(q, 4)[1]
    q.client.delete(q.core.keys.marker)
    assert q._driver.execute(q.core.script("rate_limited", jid, tok, 0)) == 0
    assert q.get_job(jid).state() == "wait"
    assert q.client.zcard(q.core.keys.marker) == 1, "no worker is woken for the job"


def test_rate_limited_job_runs_again_without_waiting_out_the_block_timeout(
    redis_url: str, tmp_path: Any
) -> None:
    """End to end (process mode): the job that raised RateLimited(0.3) must run
    again when the limit lifts, not when the worker's long idle block (60 s
    here) happens to end. Before the fix the marker was never set."""

    async def main() -> None:
        q = AsyncQueue("rv-rl-e2e", redis_url)
        w = Worker(q.name, "tests.fixtures.limit_procs:limited_once", url=redis_url,
                   mode="process", block_timeout_s=60.0)
        task = asyncio.create_task(w.run())
        job = await q.add("x", {"flag": str(tmp_path / "flag")}, attempts=1)
        try:
            assert await job.wait(15) == "done"  # well inside the 60 s block
        finally:
            await w.close(2)
            await task
            await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- 3. deleting a big flow parent is quadratic (and unbounded) in one script ----------

def test_removing_a_parent_with_many_waiting_children_keeps_the_rest_of_wait(
    redis_url: str,
) -> None:
    """flow.lua delete_pending_children removes waiting children in one pass
    over each wait list (it was an LPOS + LREM per child: quadratic, 6 s of
    blocked Redis for 20k children). The pass must keep every other job, in
    order."""
    n = 5_000
    q = Queue("rv-big", redis_url)
    before = [q.add("other", i).id for i in range(3)]
    fp = FlowProducer(redis_url)
    f = fp.add({"name": "p", "queue": "rv-big",
                "children": [{"name": "c", "data": i} for i in range(n)]})
    after = [q.add("other", i).id for i in range(3)]
    q.get_job(f.id).remove()
    assert q.counts()["wait"] == 6
    claimed = q._driver.execute(q.core.script("claim", 10, "w", 30_000))
    assert [c[0].decode() for c in claimed[1:]] == before + after  # FIFO kept
    assert q.get_job(f.id) is None


# -- 4. requeue_worker leaves a stale hand-off in the worker's inbox -------------------

def test_requeue_worker_clears_hand_offs_it_takes_back(redis_url: str) -> None:
    """add.lua hands a job to an idle worker (claimed for it, put in its inbox).
    requeue_worker (the pump's check_orphans after a lost claim reply; it keeps
    only the tokens the worker knows, and a not yet popped hand-off is not known)
    requeues that job but leaves the inbox entry. The worker's blocked
    BZPOPMIN then pops it and maintenance.handed_off starts it without any token
    check, while the requeued copy is claimed by another worker: the job runs
    twice at once (the stale run's result is refused later)."""
    q = Queue("rv-inbox", redis_url)
    assert claim(q, 4, "w1", idle_ms=5000)[1] == []  # w1 registers for hand-offs
    job = q.add("x", 1)
    assert job.state() == "active"  # handed to w1
    inbox = q.core.keys.worker_wake("w1")
    assert q.client.zcard(inbox) == 1
    ids = q._driver.execute(q.core.script("requeue_worker", "w1", 0))
    assert [i.decode() for i in ids] == [job.id]
    assert claim(q, 1, "w2")[1][0][0] == job.id  # another worker runs it
    assert q.client.zcard(inbox) == 0, "stale hand-off still in w1's inbox"


def test_a_run_given_back_to_wait_is_pending_again_for_its_scheduler(redis_url: str) -> None:
    """rate_limited.lua put the job back in wait but left processed_on, which a
    scheduler reads as "this run started": it then added the next run while this
    one was still pending (two pending runs)."""
    q = Queue("rv-sched", redis_url)
    job = q.add("x", 1)
    [(jid, tok)] = claim(q, 1)[1]
    assert q.client.hexists(q.core.keys.job(jid), "processed_on")
    assert q._driver.execute(q.core.script("rate_limited", jid, tok, 0)) == 0
    assert job.state() == "wait"
    assert not q.client.hexists(q.core.keys.job(jid), "processed_on")


def test_no_hand_off_ahead_of_a_due_delayed_job(redis_url: str) -> None:
    """add.lua handed a new job to an idle worker while an older delayed job was
    already due (not yet promoted): the new job overtook it."""
    q = Queue("rv-due", redis_url)
    old = q.add("old", 1, delay=0.05)
    assert claim(q, 1, "w1", idle_ms=60_000)[1] == []  # w1 idle, registered
    core = q.core
    # make the delayed job due without anyone promoting it
    q.client.zadd(core.keys.delayed, {old.id: 0})
    new = q.add("new", 2)
    assert new.state() == "wait"  # not handed off past the due job
    got = {i for i, _t in claim(q, 2)[1]}
    assert got == {old.id, new.id}  # one claim serves both; none jumped the queue

"""The supervisor supervises itself (issue 8): its tasks run under a tree that
logs, gives back and restarts what crashes; a lost reply never strands a job;
a timeout counts from the start of a job, not its claim; renewals are matched
by token. Against a real redis-server; the tree's own rules without one."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from rqsup import AsyncQueue, Queue
from rqsup.queue.connection import async_client
from rqsup.queue.options import JobOptions
from rqsup.queue.record import JobRecord
from rqsup.supervisor import ActiveJob, Worker, maintenance
from rqsup.supervisor.active import Running
from rqsup.supervisor.tree import Tree
from tests.helpers import await_until
from tests.proxy import LossyProxy


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 90))


# -- the tree ------------------------------------------------------------------------------


def test_tree_logs_gives_back_restarts_and_marks_a_crash_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    """Given a task that crashes four times and then runs, each crash is logged
    once with its traceback and given back, the restarts back off, the queue
    is failed after three in a row, and it is healthy again once the task has
    run for the stable period."""
    caplog.set_level(logging.ERROR, "rqsup.supervisor")

    async def main() -> None:
        tree = Tree(first_backoff_s=0.01, max_backoff_s=0.05, fail_after=3, stable_s=0.4)
        runs = 0
        given: list[str] = []

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs <= 4:
                raise RuntimeError(f"boom {runs}")
            await asyncio.sleep(3600)

        async def give_back(exc: BaseException) -> None:
            given.append(str(exc))

        entry = tree.start("worker q", flaky, queue="q", give_back=give_back)
        await await_until(lambda: runs >= 3 and tree.failed_queues(), "the queue failed")
        assert "boom" in tree.failed_queues()["q"]
        await await_until(lambda: runs == 5, "the fifth run")
        assert tree.failed_queues()  # not stable yet
        await await_until(lambda: not tree.failed_queues(), "healthy after a stable run", 3)
        assert given == [f"boom {i}" for i in range(1, 5)]
        assert entry.restarts == 4 and tree.restarts() == {"worker q": 4}
        # A task that returns while it should run is a crash too; a retired one is done.
        ends = 0

        async def returns() -> None:
            nonlocal ends
            ends += 1

        quitter = tree.start("status", returns)
        await await_until(lambda: ends >= 2, "the returning task restarted")
        Tree.retire(quitter)
        assert await Tree.wait(quitter, 2)
        await tree.stop_all()
        assert not tree.tasks

    run(main)
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()
               and r.getMessage().startswith("task worker q")]
    assert len(crashes) == 4 and all(r.exc_info for r in crashes)
    assert any("keeps crashing" in r.getMessage() for r in caplog.records)


# -- a worker whose loop crashes ------------------------------------------------------------


def test_a_crashed_worker_gives_its_jobs_back_at_once_and_restarts(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Given three jobs running, when the worker's pump crashes (a bug), then
    its jobs go back at once (not after the 30 s lease), counted as a stall,
    and the restarted worker, under a new id, runs them to completion."""
    caplog.set_level(logging.WARNING)
    runs: Counter[str] = Counter()
    gate = asyncio.Event()

    async def proc(job: ActiveJob) -> str:
        runs[job.id] += 1
        if runs[job.id] == 1:
            await gate.wait()
        return "ok"

    async def main() -> None:
        q = AsyncQueue("crashy", redis_url)
        jobs = [await q.add("j", i) for i in range(3)]
        w = Worker("crashy", proc, url=redis_url, concurrency=3, lease_s=30)
        task = asyncio.create_task(w.run())
        await await_until(lambda: len(runs) == 3, "three jobs running")
        first_id = w.worker_id

        async def broken() -> None:
            raise RuntimeError("injected pump bug")

        w.pump._step = broken  # type: ignore[method-assign]
        w.pump.check_orphans = True  # something for the pump to do
        w.pump.wake.set()
        await await_until(lambda: all(runs[j.id] == 2 for j in jobs), "each job run again", 10)
        gate.set()
        for j in jobs:
            assert await j.wait(10) == "ok"
            await j.refresh()
            assert j.stalled_count == 1 and j.attempts_started == 2
        assert w.worker_id != first_id and w.worker_id.startswith(first_id)
        await w.close(5)
        await task
        await q.close()

    run(main)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "task worker crashy crashed" in text and "gave back 3 unfinished job(s)" in text
    crash = next(r for r in caplog.records if "task worker crashy crashed" in r.getMessage())
    assert crash.levelno == logging.ERROR and crash.exc_info is not None
    assert "injected pump bug" in str(crash.exc_info[1])


# -- lost replies ------------------------------------------------------------------------------


def test_a_lost_claim_reply_gives_the_batch_back_at_once(redis_url: str) -> None:
    """Given four waiting jobs, when the reply of the worker's claim is lost on
    the network (Redis ran it), then the worker gives the batch back itself
    and runs each job once, long before the lease would have expired; no job
    stalls."""
    runs: Counter[str] = Counter()

    async def proc(job: ActiveJob) -> str:
        runs[job.id] += 1
        return "ok"

    async def main() -> None:
        proxy = LossyProxy(redis_url).start()
        q = AsyncQueue("lossy", redis_url)
        jobs = [await q.add("j", i) for i in range(4)]
        proxy.drop_reply_containing(b"attempts_started")  # the claim's reply
        w = Worker("lossy", proc, url=proxy.url, concurrency=4, lease_s=30)
        task = asyncio.create_task(w.run())
        for j in jobs:
            assert await j.wait(8) == "ok"
            await j.refresh()
            assert j.stalled_count == 0
        assert proxy.dropped == 1 and all(runs[j.id] == 1 for j in jobs)
        await w.close(5)
        await task
        await q.close()
        proxy.stop()

    run(main)


def test_a_lost_hand_off_is_given_back_at_once(redis_url: str) -> None:
    """Given an idle worker (registered for hand-offs), when the reply that
    hands it a new job is lost, then the job still runs at once (the worker
    gives back what the lost pop held), not after its lease."""

    async def proc(job: ActiveJob) -> str:
        return "ok"

    async def main() -> None:
        proxy = LossyProxy(redis_url).start()
        q = AsyncQueue("lossy-h", redis_url)
        w = Worker("lossy-h", proc, url=proxy.url, lease_s=30, block_timeout_s=20)
        task = asyncio.create_task(w.run())
        r = async_client(redis_url)
        await await_until(lambda: r.zcard(q.core.keys.idle), "the worker registered idle")
        proxy.drop_reply_containing(b"attempts_started")  # the hand-off's pop
        job = await q.add("j", 1)
        assert await job.wait(8) == "ok"
        assert proxy.dropped == 1
        await r.aclose()
        await w.close(5)
        await task
        await q.close()
        proxy.stop()

    run(main)


def test_log_lines_are_written_once_when_a_call_is_resent(redis_url: str) -> None:
    q = Queue("logs", redis_url)
    job = q.add("j", 1)
    jid, tok, _fields = q._driver.execute(q.core.script("claim", 1, "w1", 30000))[1]
    for _ in range(2):  # a resend of the same call
        assert q._driver.execute(q.core.script("log", jid, tok, 10, 1, "a", "b")) == 2
    assert q._driver.execute(q.core.script("log", jid, tok, 10, 2, "c")) == 3
    assert job.logs() == ["a", "b", "c"]
    q.close()


# -- renewals ------------------------------------------------------------------------------


def test_a_lost_renewal_names_the_token_not_the_job(redis_url: str) -> None:
    """A renewal that says an earlier attempt's token is lost does not touch the
    job's new attempt (same id, new token); nor is a job whose outcome is on
    its way reported lost."""

    async def proc(job: ActiveJob) -> None:
        return None

    async def main() -> None:
        w = Worker("renew", proc, url=redis_url)
        rec = JobRecord("7", {"name": "j", "data": "1"})
        new = Running(rec, "T2", JobOptions())
        w.running["T2"] = new
        maintenance.apply_renew_reply(w, [[b"T1"], []])  # the old attempt's token
        assert not new.lost and "T2" in w.running
        new.finished = True  # its completion is queued
        maintenance.apply_renew_reply(w, [[b"T2"], []])
        assert not new.lost
        new.finished = False
        maintenance.apply_renew_reply(w, [[b"T2"], []])
        assert new.lost and "T2" not in w.running
        await w.close()

    run(main)


# -- timeouts ------------------------------------------------------------------------------


def test_a_timeout_counts_from_the_start_of_the_job_not_its_claim(redis_url: str) -> None:
    """Given one child and four prefetched jobs of 0.6 s with a 1 s timeout,
    each job waits up to 1.8 s for the child: none times out."""

    async def main() -> None:
        q = AsyncQueue("to", redis_url)
        jobs = [await q.add("nap", {"s": 0.6}, timeout=1.0) for _ in range(4)]
        w = Worker("to", "tests.fixtures.sandbox_procs:nap", url=redis_url, mode="process",
                   concurrency=1, prefetch=3)
        task = asyncio.create_task(w.run())
        for j in jobs:
            assert await j.wait(15) == 0.6
        await w.close(5)
        await task
        await q.close()

    run(main)


def test_process_mode_timeout_still_kills_a_job_that_runs_too_long(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("to2", redis_url)
        job = await q.add("nap", {"s": 30}, timeout=0.5)
        w = Worker("to2", "tests.fixtures.sandbox_procs:nap", url=redis_url, mode="process")
        task = asyncio.create_task(w.run())

        async def failed() -> bool:
            return await job.state() == "failed"

        await await_until(failed, "the job timed out", 15)
        await job.refresh()
        assert job.error_type == "JobTimedOut" and "timed out after 0.5s" in str(
            job.failed_reason)
        await w.close(5)
        await task
        await q.close()

    run(main)



def test_json_log_lines_carry_the_job_fields() -> None:
    import json

    from rqsup.supervisor.health import JsonFormatter
    from rqsup.supervisor.joblog import job_line
    from rqsup.supervisor.joblog import log as joblog

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Keep()
    joblog.addHandler(handler)
    try:
        job_line(logging.WARNING, "q", "7", 2, 5, "failed: %s: %s; next attempt %s",
                 "ValueError", "bad row", "in 4s", error_type="ValueError")
    finally:
        joblog.removeHandler(handler)
    out = json.loads(lines[0])
    assert out["msg"] == ("queue q: job 7 (attempt 2/5): failed: ValueError: bad row; "
                          "next attempt in 4s")
    assert (out["queue"], out["job_id"], out["attempt"], out["error_type"]) == (
        "q", "7", 2, "ValueError")

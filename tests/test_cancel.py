"""Cancellation (issue 10) against a real redis-server, in all three modes:
queue.cancel from another connection, worker.cancel_job / cancel_all, a
process-mode processor that ignores it, and the renewal backstop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rqsup import AsyncQueue, Queue
from rqsup.errors import JobCancelled, JobNotFound, JobStateError
from rqsup.supervisor import ActiveJob, Worker
from rqsup.supervisor.pool import SandboxSettings
from tests.helpers import await_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

PROCS = "tests.fixtures.cancel_procs"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 90))


async def state(q: AsyncQueue, job_id: str) -> str:
    return str(await q._driver.drive(q.core.op_state(job_id)))


async def progress_is(q: AsyncQueue, job_id: str, value: Any) -> bool:
    job = await q.get_job(job_id)
    return job is not None and job.progress == value


def test_cancel_a_job_that_is_not_running_fails_it_at_once(redis_url: str) -> None:
    q = Queue("cx", redis_url)
    waiting = q.add("x", attempts=5, remove_on_fail=False)
    delayed = q.add("x", delay=60, remove_on_fail=False)
    assert q.cancel(waiting.id, "not needed") == "failed"
    assert q.cancel(delayed.id) == "failed"
    for job_id, reason in ((waiting.id, "not needed"), (delayed.id, "cancelled")):
        job = q.get_job(job_id)
        assert job is not None and job.state() == "failed"
        assert job.error_type == "JobCancelled" and job.failed_reason == reason
    assert q.counts()["wait"] == 0 and q.counts()["delayed"] == 0
    with pytest.raises(JobStateError, match="it is failed"):
        q.cancel(waiting.id)
    with pytest.raises(JobNotFound):
        q.cancel("nope")
    names = [e[1][b"event"] for e in q.client.xrange(q.core.keys.events)]
    assert names.count(b"cancelled") == 2


def test_async_processor_gets_cancelled_error_from_another_process(redis_url: str) -> None:
    seen: list[str] = []

    async def proc(job: ActiveJob) -> Any:
        job.update_progress("started")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(job.id)
            raise
        return "never"

    async def main() -> None:
        q = AsyncQueue("ca", redis_url)
        other = Queue("ca", redis_url)  # another connection, as another host would
        w = Worker("ca", proc, url=redis_url)
        wt = asyncio.create_task(w.run())
        job = await q.add("x", attempts=3, remove_on_fail=False)
        await await_until(lambda: progress_is(q, job.id, "started"), "the job running")
        assert await asyncio.to_thread(other.cancel, job.id, "user asked") == "signalled"
        with pytest.raises(Exception, match="user asked"):
            await q.wait_for(job.id, timeout=10)
        done = await q.get_job(job.id)
        assert done is not None and done.error_type == "JobCancelled"
        assert done.attempts_made == 1 and await state(q, job.id) == "failed"  # no retry
        assert seen == [job.id]
        await w.close(5)
        await wt
        other.close()
        await q.close()

    run(main)


def test_a_processor_that_returns_or_raises_another_error_decides(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        job.update_progress(f"run {job.attempts_made}")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if job.data == "keep":
                return {"partial": True}
            if job.attempts_made == 0:
                raise ValueError("retry me") from None
            raise
        return "never"

    async def main() -> None:
        q = AsyncQueue("cd", redis_url)
        w = Worker("cd", proc, url=redis_url, concurrency=2)
        wt = asyncio.create_task(w.run())
        keep = await q.add("x", "keep")
        retry = await q.add("x", "retry", attempts=2)
        await await_until(lambda: progress_is(q, keep.id, "run 0"), "keep running")
        await await_until(lambda: progress_is(q, retry.id, "run 0"), "retry running")
        assert w.cancel_job(keep.id) and w.cancel_job(retry.id, "first")
        assert await q.wait_for(keep.id, timeout=10) == {"partial": True}
        # The processor raised another error: an ordinary failure, retried; the
        # cancel was for that attempt only.
        await await_until(lambda: progress_is(q, retry.id, "run 1"), "the retry running")
        assert not w.cancel_job("nope")
        assert w.cancel_all("closing time") == 1
        with pytest.raises(Exception, match="closing time"):
            await q.wait_for(retry.id, timeout=10)
        await w.close(5)
        await wt
        await q.close()

    run(main)


def test_thread_processor_sees_job_cancelled(redis_url: str) -> None:
    def proc(job: ActiveJob) -> Any:
        job.update_progress("started")
        if not job.cancelled.wait(30):
            return "never cancelled"
        raise JobCancelled(job.cancel_reason)

    async def main() -> None:
        q = AsyncQueue("ct", redis_url)
        w = Worker("ct", proc, url=redis_url, mode="thread")
        wt = asyncio.create_task(w.run())
        job = await q.add("x", attempts=3, remove_on_fail=False)
        await await_until(lambda: progress_is(q, job.id, "started"), "the job running")
        assert await q.cancel(job.id, "from the thread test") == "signalled"
        with pytest.raises(Exception, match="from the thread test"):
            await q.wait_for(job.id, timeout=10)
        done = await q.get_job(job.id)
        assert done is not None and done.error_type == "JobCancelled"
        assert done.attempts_made == 1
        await w.close(5)
        await wt
        await q.close()

    run(main)


@pytest.mark.parametrize("processor,outcome", [
    ("watches", "JobCancelled"), ("returns_when_cancelled", "completed"),
    ("ignores", "JobCancelled")])
def test_process_mode_cancel_with_grace_then_kill(redis_url: str, processor: str,
                                                  outcome: str) -> None:
    async def main() -> None:
        q = AsyncQueue(f"cp{processor}", redis_url)
        w = Worker(q.name, f"{PROCS}:{processor}", url=redis_url, mode="process",
                   sandbox=SandboxSettings(cancel_grace_s=0.5))
        wt = asyncio.create_task(w.run())
        job = await q.add("x", attempts=3, remove_on_fail=False)
        await await_until(lambda: progress_is(q, job.id, "started"), "the job running",
                          timeout=30)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await q.cancel(job.id, "stop it") == "signalled"
        if outcome == "completed":
            assert await q.wait_for(job.id, timeout=10) == {"partial": True,
                                                            "reason": "stop it"}
        else:
            with pytest.raises(Exception, match="stop it"):
                await q.wait_for(job.id, timeout=10)
            done = await q.get_job(job.id)
            assert done is not None and done.error_type == "JobCancelled"
            assert done.attempts_made == 1 and await state(q, job.id) == "failed"
        if processor == "ignores":
            assert loop.time() - began >= 0.5  # the grace was given
        # The child pool goes on: a next job runs.
        assert w.pool is not None
        await w.close(5)
        await wt
        await q.close()

    run(main)


def test_renewal_reports_a_cancel_for_the_attempt_that_holds_it(redis_url: str) -> None:
    q = Queue("cr", redis_url)
    job = q.add("x")
    reply = q._driver.execute(q.core.script("claim", 1, "w1", 30_000))
    token = reply[1][1].decode()
    assert q._driver.execute(q.core.script("renew", 30_000, job.id, token, "")) == [[], []]
    assert q.cancel(job.id, "late") == "signalled"
    lost, cancelled = q._driver.execute(q.core.script("renew", 30_000, job.id, token, ""))
    assert lost == [] and cancelled == [token.encode(), b"late"]
    # A later attempt (another token) is not cancelled by it.
    assert q._driver.execute(q.core.script("renew", 30_000, job.id, "999", "")) == [
        [b"999"], []]


def test_worker_local_events(redis_url: str) -> None:
    got: list[tuple[Any, ...]] = []

    async def proc(job: ActiveJob) -> Any:
        job.update_progress(50)
        if job.data == "bad":
            raise ValueError("broken")
        return {"ok": job.data}

    async def on_completed(job: Any, value: Any) -> None:  # a coroutine callback
        got.append(("completed", job.id, value))

    async def main() -> None:
        q = AsyncQueue("ev", redis_url)
        w = Worker("ev", proc, url=redis_url)
        w.on("completed", on_completed)
        w.on("failed", lambda job, err: got.append(("failed", job.id, err.message)))
        w.on("progress", lambda job, p: got.append(("progress", job.id, p)))
        w.on("drained", lambda: got.append(("drained",)))
        with pytest.raises(Exception, match="unknown worker event 'done'"):
            w.on("done", print)
        wt = asyncio.create_task(w.run())
        good = await q.add("x", 1)
        bad = await q.add("x", "bad", attempts=1)
        await await_until(lambda: ("failed", bad.id, "broken") in got
                          and ("completed", good.id, {"ok": 1}) in got, "both events")
        assert ("progress", good.id, 50) in got
        await await_until(lambda: ("drained",) in got, "drained")
        await w.close(5)
        await wt
        await q.close()

    run(main)


def test_worker_stalled_event(redis_url: str) -> None:
    stalled: list[str] = []

    async def proc(job: ActiveJob) -> Any:
        return "ran"

    async def main() -> None:
        q = AsyncQueue("evs", redis_url)
        sync = Queue("evs", redis_url)
        job = await q.add("x")
        sync._driver.execute(sync.core.script("claim", 1, "ghost", 30_000))
        sync.client.zadd(sync.core.keys.active, {job.id: 0})  # its holder is long gone
        w = Worker("evs", proc, url=redis_url, stall_interval_s=0.2, max_stalled_count=3)
        w.on("stalled", stalled.append)
        wt = asyncio.create_task(w.run())
        assert await q.wait_for(job.id, timeout=10) == "ran"
        assert stalled == [job.id]
        await w.close(5)
        await wt
        sync.close()
        await q.close()

    run(main)


def test_a_cancelled_attempt_that_is_given_back_fails_instead_of_running_again(
        redis_url: str) -> None:
    q = Queue("cg", redis_url)
    job = q.add("x", attempts=3, remove_on_fail=False)
    q._driver.execute(q.core.script("claim", 1, "w9", 30_000))
    assert q.cancel(job.id, "stop") == "signalled"
    # Its worker dies before it hears of it: the restart gives the job back.
    q._driver.execute(q.core.script("requeue_worker", "w9", 1))
    done = q.get_job(job.id)
    assert done is not None and done.state() == "failed"
    assert done.error_type == "JobCancelled" and done.failed_reason == "stop"
    # The same through the stall sweep.
    other = q.add("y", remove_on_fail=False)
    q._driver.execute(q.core.script("claim", 1, "w8", 30_000))
    q.cancel(other.id, "late")
    q.client.zadd(q.core.keys.active, {other.id: 0})
    q._driver.execute(q.core.script("sweep_stalled", 0, 5, 0, 100, 5, -1))
    assert q.get_job(other.id).error_type == "JobCancelled"  # type: ignore[union-attr]

"""Manual processing (BullMQ's getNextJob) and a processor moving its own job
back (move_to_delayed + DelayedError, move_to_wait + WaitingError), against a
real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rqsup import AsyncQueue, InvalidOption, LeaseLost, Queue
from rqsup.errors import DelayedError, UnrecoverableError, WaitingError
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import await_until

PROCS = "tests.fixtures.cancel_procs"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))


def test_get_next_job_then_move_to_completed_with_fetch_next(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("man", redis_url)
        w = Worker("man", None, url=redis_url, lease_s=30, block_timeout_s=0.3)
        a, b = await q.add("a", 1), await q.add("b", 2)
        job = await w.get_next_job("tok-1")
        assert job is not None and job.id == a.id and job.data == 1
        assert await q._driver.drive(q.core.op_state(a.id)) == "active"
        nxt = await job.move_to_completed({"done": 1}, "tok-1", fetch_next=True)
        assert nxt is not None and nxt.id == b.id
        assert (await q.get_job(a.id)).return_value == {"done": 1}  # type: ignore[union-attr]
        assert await nxt.move_to_completed("ok", "tok-1", fetch_next=True) is None
        began = time.monotonic()
        assert await w.get_next_job("tok-1") is None  # blocked up to block_timeout_s
        assert time.monotonic() - began >= 0.25
        assert await w.get_next_job("tok-1", block=False) is None
        # A job added while blocked is taken at once (the marker wakes the wait).
        waiter = asyncio.create_task(w.get_next_job("tok-2"))

        async def blocked() -> bool:
            return int((await q.client.info("clients"))["blocked_clients"]) >= 1

        await await_until(blocked, "the manual worker blocking for a job")
        c = await q.add("c", 3)
        got = await waiter
        assert got is not None and got.id == c.id
        await got.move_to_completed(None, "tok-2")
        with pytest.raises(InvalidOption, match="token"):
            await w.get_next_job("")
        with pytest.raises(InvalidOption, match="no processor"):
            await w.run()
        await w.close()
        await q.close()

    run(main)


def test_move_to_failed_retries_by_attempts_and_stale_tokens_are_refused(
        redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("manf", redis_url)
        w = Worker("manf", None, url=redis_url, lease_s=1, renew_interval_s=0.5,
                   block_timeout_s=0.2)
        job = await q.add("x", attempts=2, remove_on_fail=False)
        taken = await w.get_next_job("me")
        assert taken is not None
        with pytest.raises(LeaseLost):
            await taken.move_to_completed(1, "someone-else")  # not the claim's token
        await taken.move_to_failed(ValueError("first"), "me")
        assert (await q.get_job(job.id)).attempts_made == 1  # type: ignore[union-attr]
        again = await w.get_next_job("me")
        assert again is not None and again.id == job.id
        await again.extend_lock("me", 30)
        # A lease that ran out, taken by another worker: the old holder's
        # writes are refused (fenced), with a typed error.
        await again.extend_lock("me", 0.05)

        async def lease_over() -> bool:
            secs, micros = await q.client.time()
            score = await q.client.zscore(q.core.keys.active, job.id)
            return score is not None and score < secs * 1000 + micros // 1000

        await await_until(lease_over, "the shortened lease running out")
        q2 = Queue("manf", redis_url)
        await asyncio.to_thread(q2._driver.execute,
                                q2.core.script("sweep_stalled", 0, 5, 0, 100, 5, -1))
        other = Worker("manf", None, url=redis_url, block_timeout_s=0.2)
        stolen = await other.get_next_job("them")
        assert stolen is not None and stolen.id == job.id
        with pytest.raises(LeaseLost):
            await again.move_to_completed("late", "me")
        with pytest.raises(LeaseLost):
            await again.extend_lock("me", 10)
        await stolen.move_to_failed(UnrecoverableError("no"), "them")
        final = await q.get_job(job.id)
        assert final is not None and final.error_type == "UnrecoverableError"
        assert await final.state() == "failed"
        q2.close()
        await w.close()
        await other.close()
        await q.close()

    run(main)


def test_manual_move_to_delayed_and_stall_check(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("mand", redis_url)
        w = Worker("mand", None, url=redis_url, lease_s=1, stall_interval_s=0.2,
                   max_stalled_count=5, block_timeout_s=0.2)
        job = await q.add("x")
        taken = await w.get_next_job("t")
        assert taken is not None
        await taken.move_to_delayed(time.time() + 60, "t")
        stored = await q.get_job(job.id)
        assert stored is not None and await stored.state() == "delayed"
        assert stored.attempts_made == 0
        await stored.promote()
        taken = await w.get_next_job("t")
        assert taken is not None
        # Nobody extends the lease: the stall check puts it back.
        sweeper = w.start_stall_check()

        async def requeued() -> bool:
            return bool(await stored.state() == "wait")

        await await_until(requeued, "the stall check requeueing the job", 10)
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await w.close()
        await q.close()

    run(main)


@pytest.mark.parametrize("mode", ["async", "thread", "process"])
def test_a_processor_moves_its_job_back_without_spending_an_attempt(
        redis_url: str, mode: str) -> None:
    def delays_once(job: ActiveJob) -> Any:
        if job.progress is None:
            job.update_progress("moved")
            job.move_to_delayed(time.time() + 0.3)
            raise DelayedError()
        return {"attempts_made": job.attempts_made}

    def waits_once(job: ActiveJob) -> Any:
        if job.progress is None:
            job.update_progress("moved")
            job.move_to_wait()
            raise WaitingError()
        return "second run"

    async def adelays(job: ActiveJob) -> Any:
        return delays_once(job)

    async def awaits(job: ActiveJob) -> Any:
        return waits_once(job)

    procs: dict[str, tuple[Any, Any]] = {
        "async": (adelays, awaits), "thread": (delays_once, waits_once),
        "process": (f"{PROCS}:delays_once", f"{PROCS}:waits_once")}

    async def main() -> None:
        for kind, proc in zip(("delayed", "wait"), procs[mode], strict=True):
            name = f"mb{mode}{kind}"
            q = AsyncQueue(name, redis_url)
            w = Worker(name, proc, url=redis_url, mode=mode)
            wt = asyncio.create_task(w.run())
            job = await q.add("x", {"runs": 0}, attempts=1)
            began = time.monotonic()
            result = await q.wait_for(job.id, timeout=30)
            if kind == "delayed":
                assert result == {"attempts_made": 0}  # the move spent no attempt
                assert time.monotonic() - began >= 0.25
            else:
                assert result == "second run"
            done = await q.get_job(job.id)
            assert done is not None and done.attempts_made == 1
            await w.close(5)
            await wt
            await q.close()

    run(main)


def test_delayed_error_without_a_move_fails_clearly(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("mbbad", redis_url)
        w = Worker("mbbad", f"{PROCS}:delayed_without_move", url=redis_url, mode="process")
        wt = asyncio.create_task(w.run())
        job = await q.add("x", attempts=1)
        with pytest.raises(Exception, match=r"without job.move_to_delayed\(when\) first"):
            await q.wait_for(job.id, timeout=30)
        await w.close(5)
        await wt
        await q.close()

    run(main)


def test_fetch_next_after_a_refused_completion_claims_nothing(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("manx", redis_url)
        w = Worker("manx", None, url=redis_url, lease_s=30, block_timeout_s=0.2,
                   job_defaults={"attempts": 2})
        job = await q.add("x")
        await q.add("y")
        taken = await w.get_next_job("t")
        assert taken is not None and taken.id == job.id
        taken.lease_token = "999999"  # as if the lease had gone to another claim
        with pytest.raises(LeaseLost):
            await taken.move_to_completed(1, "t", fetch_next=True)
        assert (await q.counts())["active"] == 1  # only the first job: nothing orphaned
        again = await w.get_next_job("t")
        assert again is not None
        # The worker's job_defaults apply: attempts 2, so a failure is retried.
        await again.move_to_failed(ValueError("once"), "t")
        assert await q._driver.drive(q.core.op_state(again.id)) == "wait"
        await w.close()
        await q.close()

    run(main)

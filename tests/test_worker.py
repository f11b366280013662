"""The worker loop against a real redis-server: outcomes, retries, timeouts, wake-ups, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from rqsup import AsyncQueue, InvalidOption, JobFailed, Queue, UnrecoverableError
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import await_until, wait_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))


async def started(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop(worker: Worker, task: asyncio.Task[None], timeout: float = 5) -> None:
    await worker.close(timeout)
    await task


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks other than the test's own (and ``run``'s wait_for wrapper)."""
    return [t for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and "wait_for" not in repr(t.get_coro())]


def test_async_processor_result_progress_and_logs(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        job.update_progress({"pct": 50})
        job.log(f"working on {job.data['n']}")
        return {"double": job.data["n"] * 2}

    async def main() -> None:
        q = AsyncQueue("w", redis_url)
        w = Worker("w", proc, url=redis_url, concurrency=3)
        t = await started(w)
        assert await q.call("calc", {"n": 21}, timeout=10) == {"double": 42}
        job = (await q.get_jobs("completed"))[0]
        assert job.progress == {"pct": 50}
        assert await job.logs() == ["working on 21"]
        assert job.attempts_made == 1 and job.finished_on_ms and job.worker == w.worker_id
        await stop(w, t)

    run(main)


def test_thread_mode_runs_blocking_functions_concurrently(redis_url: str) -> None:
    barrier = threading.Barrier(3, timeout=10)

    def proc(job: ActiveJob) -> Any:
        barrier.wait()  # only passes when three jobs run at once
        job.update_progress(100)
        return threading.current_thread().name

    async def main() -> None:
        q = AsyncQueue("t", redis_url)
        await q.add_bulk([("x", i) for i in range(3)])
        w = Worker("t", proc, url=redis_url, mode="thread", concurrency=3)
        t = await started(w)
        await await_until(lambda: w.processed == 3, "three thread jobs")
        jobs = await q.get_jobs("completed")
        assert {j.progress for j in jobs} == {100}
        assert len({j.return_value for j in jobs}) == 3
        await stop(w, t)

    run(main)


def test_mode_and_processor_kind_must_match() -> None:
    async def coro(job: ActiveJob) -> None: ...

    def plain(job: ActiveJob) -> None: ...

    with pytest.raises(InvalidOption, match="coroutine function"):
        Worker("q", plain, mode="async")
    with pytest.raises(InvalidOption, match="plain function"):
        Worker("q", coro, mode="thread")
    with pytest.raises(InvalidOption, match="mode must be"):
        Worker("q", coro, mode="fork")
    with pytest.raises(InvalidOption, match="concurrency"):
        Worker("q", coro, concurrency=0)


def test_retries_with_backoff_then_success(redis_url: str) -> None:
    runs: list[int] = []

    async def flaky(job: ActiveJob) -> str:
        runs.append(job.attempts_made)
        if job.attempts_made < 2:
            raise ConnectionError("upstream down")
        return "ok"

    async def main() -> None:
        q = AsyncQueue("r", redis_url)
        w = Worker("r", flaky, url=redis_url)
        t = await started(w)
        result = await q.call("x", None, timeout=10, attempts=3,
                              backoff={"type": "exponential", "delay": 0.05})
        assert result == "ok" and runs == [0, 1, 2]
        await stop(w, t)

    run(main)


def test_attempts_exhausted_fails_with_remote_error(redis_url: str) -> None:
    async def bad(job: ActiveJob) -> None:
        raise KeyError("missing thing")

    async def main() -> None:
        q = AsyncQueue("f", redis_url)
        w = Worker("f", bad, url=redis_url)
        t = await started(w)
        with pytest.raises(JobFailed) as info:
            await q.call("x", None, timeout=10, attempts=2)
        assert info.value.error_type == "KeyError"
        assert "missing thing" in info.value.message
        assert info.value.stacktrace and "raise KeyError" in info.value.stacktrace
        job = (await q.get_jobs("failed"))[0]
        assert job.attempts_made == 2 and job.failed_reason and job.error_type == "KeyError"
        await stop(w, t)

    run(main)


def test_unrecoverable_error_skips_remaining_attempts(redis_url: str) -> None:
    calls = []

    async def proc(job: ActiveJob) -> None:
        calls.append(job.id)
        raise UnrecoverableError("bad input, do not retry")

    async def main() -> None:
        q = AsyncQueue("u", redis_url)
        w = Worker("u", proc, url=redis_url)
        t = await started(w)
        with pytest.raises(JobFailed, match="do not retry"):
            await q.call("x", None, timeout=10, attempts=5)
        assert len(calls) == 1
        await stop(w, t)

    run(main)


def test_custom_backoff_strategy_and_unknown_strategy(redis_url: str) -> None:
    seen: list[tuple[int, str]] = []

    def strategy(attempts_made: int, error_type: str, message: str, data: Any) -> float:
        seen.append((attempts_made, error_type))
        return -1 if attempts_made >= 2 else 0.01

    async def proc(job: ActiveJob) -> None:
        raise RuntimeError("nope")

    async def main() -> None:
        q = AsyncQueue("c", redis_url)
        w = Worker("c", proc, url=redis_url, backoff_strategies={"mine": strategy})
        t = await started(w)
        with pytest.raises(JobFailed):
            await q.call("x", None, timeout=10, attempts=9, backoff={"type": "mine"})
        assert seen == [(1, "RuntimeError"), (2, "RuntimeError")]
        with pytest.raises(JobFailed, match="not registered"):
            await q.call("x", None, timeout=10, attempts=3, backoff={"type": "other"})
        await stop(w, t)

    run(main)


def test_timeout_fails_the_attempt(redis_url: str) -> None:
    async def slow(job: ActiveJob) -> None:
        await asyncio.sleep(60)

    async def main() -> None:
        q = AsyncQueue("to", redis_url)
        w = Worker("to", slow, url=redis_url)
        t = await started(w)
        with pytest.raises(JobFailed, match=r"timed out after 0.2s") as info:
            await q.call("x", None, timeout=10, job_timeout=0.2)
        assert info.value.error_type == "JobTimedOut"
        await stop(w, t)

    run(main)


def test_an_add_wakes_an_idle_worker_without_polling(redis_url: str) -> None:
    # Given a worker that would otherwise block for 30 s between claims
    async def proc(job: ActiveJob) -> str:
        return "done"

    async def main() -> None:
        q = AsyncQueue("wake", redis_url)
        w = Worker("wake", proc, url=redis_url, block_timeout_s=30)
        t = await started(w)
        await await_until(lambda: w.pump.idle.is_set(), "worker idle")
        calls_before = w.pump.calls
        # When a job is added, Then it is done long before the 30 s block ends
        assert await q.call("x", None, timeout=5) == "done"
        assert w.pump.calls - calls_before <= 3  # woken once, not polling
        # And a delayed job is picked up when due, not at the end of the block
        job = await q.add("later", None, delay=0.3)
        assert await job.wait(timeout=5) == "done"
        await stop(w, t)

    run(main)


def test_priorities_are_served_in_order_by_a_worker(redis_url: str) -> None:
    order: list[int] = []

    async def proc(job: ActiveJob) -> None:
        order.append(job.data)

    async def main() -> None:
        q = AsyncQueue("p", redis_url)
        await q.add_bulk([{"name": "x", "data": p, "opts": {"priority": p}} for p in (5, 3, 9, 1)])
        w = Worker("p", proc, url=redis_url, concurrency=1)
        t = await started(w)
        await await_until(lambda: len(order) == 4, "4 jobs")
        assert order == [1, 3, 5, 9]
        await stop(w, t)

    run(main)


def test_close_waits_for_running_jobs_and_gives_back_the_rest(redis_url: str) -> None:
    release = asyncio.Event()
    started_ids: list[str] = []

    async def proc(job: ActiveJob) -> str:
        started_ids.append(job.id)
        if job.data == "quick":
            await release.wait()
            return "finished during close"
        await asyncio.sleep(60)
        return "never"

    async def main() -> None:
        q = AsyncQueue("close", redis_url)
        quick = await q.add("x", "quick")
        stuck = await q.add("x", "stuck")
        w = Worker("close", proc, url=redis_url, concurrency=2)
        t = await started(w)
        await await_until(lambda: len(started_ids) == 2, "both jobs running")
        closing = asyncio.create_task(w.close(timeout=1.0))
        release.set()
        await closing
        await t
        assert await quick.wait(5) == "finished during close"
        assert await stuck.state() == "wait"  # given back, first in line
        rec = await q.get_job(stuck.id)
        assert rec is not None and rec.stalled_count == 0

    run(main)


def test_close_in_the_middle_of_claims_leaves_nothing_active(redis_url: str) -> None:
    """Close lands while claims are in flight (a flood of short jobs, many
    closes at random moments): nothing stays active, nothing is lost."""

    async def proc(job: ActiveJob) -> int:
        await asyncio.sleep(0)
        return int(job.data)

    async def main() -> None:
        q = AsyncQueue("flood", redis_url)
        total = 3000
        await q.add_bulk([("n", i) for i in range(total)])
        for round_no in range(6):
            w = Worker("flood", proc, url=redis_url, concurrency=20)
            t = await started(w)
            await await_until(lambda w=w: w.processed > 0, "some jobs done")
            await asyncio.sleep(0.001 * round_no)  # vary where the close lands
            await stop(w, t, timeout=1)
            assert leftover_tasks() == [], round_no
            counts = await q.counts()
            assert counts["active"] == 0, (round_no, counts)
            assert counts["wait"] + counts["completed"] == total, (round_no, counts)
        raw = q.client
        assert await raw.keys("rqsup:{flood}:wake:*") == []  # private wake keys cleaned

    run(main)


@pytest.mark.single_only("CLIENT LIST answers for one Cluster node, not the worker's")
def test_idle_worker_closes_promptly(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> None: ...

    async def main() -> None:
        w = Worker("idle", proc, url=redis_url, block_timeout_s=30)
        t = await started(w)
        await await_until(lambda: w.pump.idle.is_set(), "worker idle")
        probe = AsyncQueue("idle", redis_url).client

        async def blocked() -> bool:  # its BZPOPMIN is in Redis now
            clients: Any = await probe.client_list()
            return any(c.get("cmd") == "bzpopmin" for c in clients)

        await await_until(blocked, "the worker blocked on the marker")
        await probe.aclose()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await stop(w, t)
        # Blocked for up to 30 s on Redis, it is woken by its own wake key.
        assert loop.time() - began < 5
        assert leftover_tasks() == []  # nothing of the worker still running

    run(main)


def test_malformed_and_orphan_jobs_fail_alone(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> str:
        return "fine"

    async def main() -> None:
        q = AsyncQueue("m", redis_url)
        good = await q.add("x", 1)
        # A hand-planted hash with broken data, and an id whose hash is gone
        await q.client.hset(q.core.keys.job("bad"), mapping={"name": "x", "data": "{not json"})
        await q.client.lpush(q.core.keys.wait, "bad", "ghost")
        good2 = await q.add("x", 2)
        w = Worker("m", proc, url=redis_url)
        t = await started(w)
        assert await good.wait(5) == "fine" and await good2.wait(5) == "fine"
        bad = await q.get_job("bad")
        assert bad is not None

        async def bad_failed() -> bool:
            return await bad.state() == "failed"  # type: ignore[union-attr]

        await await_until(bad_failed, "the malformed job to fail")
        assert await bad.state() == "failed"
        await bad.refresh()
        assert bad.error_type == "MalformedJob" and "not valid JSON" in (bad.failed_reason or "")
        with pytest.raises(JobFailed, match="malformed"):
            await bad.wait(1)
        await stop(w, t)

    run(main)


@contextlib.contextmanager
def worker_in_thread(
    redis_url: str, queue: str, proc: Callable[[ActiveJob], Awaitable[Any]]
) -> Iterator[None]:
    """An async worker on its own loop in a thread, for tests of sync callers."""
    ready = threading.Event()
    stop_evt: list[Callable[[], None]] = []

    def worker_thread() -> None:
        async def main() -> None:
            w = Worker(queue, proc, url=redis_url)
            t = asyncio.create_task(w.run())
            loop = asyncio.get_running_loop()
            done = asyncio.Event()
            stop_evt.append(lambda: loop.call_soon_threadsafe(done.set))
            ready.set()
            await done.wait()
            await stop(w, t)

        asyncio.run(main())

    th = threading.Thread(target=worker_thread)
    th.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        stop_evt[0]()
        th.join(20)


def test_sync_call_from_another_thread(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        return job.data + 1

    with worker_in_thread(redis_url, "s", proc):
        q = Queue("s", redis_url)
        assert [q.call("inc", i, timeout=10) for i in range(20)] == list(range(1, 21))
        with pytest.raises(TimeoutError):
            q.call("inc", None, timeout=0.5, delay=3600)
        done_job = q.add("inc", 41)
        q.wait_for(done_job.id, timeout=10)
        # a job that finished before anyone waited is still seen
        assert done_job.wait(timeout=5) == 42
        q.close()  # stops its event reader with it


def test_sync_event_reader_survives_errors_and_stops_with_its_queue(redis_url: str) -> None:
    from rqsup.queue.waiters import SyncEventReader

    async def proc(job: ActiveJob) -> Any:
        return job.data * 2

    with worker_in_thread(redis_url, "r", proc):
        q = Queue("r", redis_url)
        assert q.call("x", 1, timeout=10) == 2
        reader = SyncEventReader.for_queue(q.client, q.core.keys.events, None)
        # A non-connection error inside the reader (as a client closed under it
        # gives) must not kill it: it logs, backs off and reads on.
        real_xread = reader.client.xread
        calls = {"n": 0}

        def flaky_xread(*a: Any, **kw: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise TypeError("planted reader fault")
            return real_xread(*a, **kw)

        reader.client.xread = flaky_xread  # type: ignore[method-assign]
        wait_until(lambda: calls["n"] >= 2, "the reader to read again after the fault")
        assert reader.is_alive()
        assert q.call("x", 2, timeout=10) == 4
        reader.client.xread = real_xread  # type: ignore[method-assign]
        q.close()
        wait_until(lambda: not reader.is_alive(), "the reader to stop with its queue")
        q2 = Queue("r", redis_url)
        assert q2.call("x", 3, timeout=10) == 6  # a fresh reader serves the new client
        q2.close()

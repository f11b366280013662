"""Process mode against a real redis-server and real children: one fixture
processor per behaviour; for each, the job's final state and reason, the
child replaced, and the supervisor (this process) alive."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from rqsup import AsyncQueue
from rqsup.supervisor import Worker
from rqsup.supervisor.pool import SandboxSettings
from tests.helpers import await_until

P = "tests.fixtures.sandbox_procs:"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 90))


def child_pids(w: Worker) -> set[int]:
    assert w.pool is not None
    return {c.pid for c in w.pool.children if c is not None and not c.dead}


async def one_job(
    redis_url: str, proc: str, data: Any = None, *, opts: dict[str, Any] | None = None,
    sandbox: SandboxSettings | None = None, concurrency: int = 1, queue: str = "sb",
) -> tuple[Any, Worker, set[int], set[int]]:
    """Run one job to its end in a fresh process-mode worker; returns the job's
    record, the worker, and the child pids before and after."""
    q = AsyncQueue(queue, redis_url)
    w = Worker(queue, P + proc, url=redis_url, mode="process", concurrency=concurrency,
               sandbox=sandbox, prefetch=0)
    await w.prepare()
    before = child_pids(w)
    task = asyncio.create_task(w.run())
    job = await q.add("j", data, **(opts or {}))

    async def ended() -> bool:
        return await job.state() in ("completed", "failed")

    await await_until(ended, f"job {proc} to end", timeout=30)
    # The replacement (if any) boots in the background: wait for a full pool.
    await await_until(lambda: len(child_pids(w)) == concurrency, "a full pool", timeout=15)
    after = child_pids(w)
    rec = await q.get_job(job.id)
    await w.close(5)
    await task
    await q.close()
    return rec, w, before, after


def test_ok_result_and_child_reused(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rqsup.child")

    async def main() -> None:
        rec, _w, before, after = await one_job(redis_url, "ok", {"x": 1})
        assert rec.return_value["data"] == {"x": 1}
        assert rec.return_value["pid"] in before  # ran in a pre-started child
        assert before == after  # reused, not replaced
        # the child's stdout went to our log, with the job id
        assert any(f"job {rec.id}: hello from job {rec.id}" in r.getMessage()
                   for r in caplog.records)

    run(main)


def test_raises_fails_with_remote_error_and_child_is_reused(redis_url: str) -> None:
    async def main() -> None:
        rec, _w, before, after = await one_job(redis_url, "raises", "oops", opts={"attempts": 1})
        assert rec.error_type == "ValueError" and "bad input 'oops'" in rec.failed_reason
        assert "Traceback" in (rec.stacktrace or "")
        assert before == after

    run(main)


def test_unrecoverable_skips_remaining_attempts(redis_url: str) -> None:
    async def main() -> None:
        rec, *_ = await one_job(redis_url, "unrecoverable", opts={"attempts": 5})
        assert rec.error_type == "UnrecoverableError" and rec.attempts_made == 1

    run(main)


def test_slow_job_reports_progress_and_logs(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("sb", redis_url)
        rec, *_ = await one_job(redis_url, "slow_progress")
        assert rec.return_value == "slow done" and rec.progress == 100
        job = await q.get_job(rec.id)
        assert job is not None and await job.logs() == ["at 25%", "at 50%", "at 75%", "at 100%"]
        await q.close()

    run(main)


def test_cpu_spin_past_timeout_is_killed_and_replaced(redis_url: str) -> None:
    async def main() -> None:
        rec, _w, before, after = await one_job(redis_url, "spin", opts={"timeout": 0.5})
        assert rec.error_type == "JobTimedOut" and "timed out" in rec.failed_reason
        assert before.isdisjoint(after)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in before)

    run(main)


def test_timeout_kills_the_whole_group_grandchild_too(redis_url: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"

    async def main() -> None:
        rec, *_ = await one_job(redis_url, "grandchild_hang", {"pidfile": str(pidfile)},
                                opts={"timeout": 1})
        assert rec.error_type == "JobTimedOut"
        grandchild = int(pidfile.read_text())

        def gone() -> bool:
            try:
                return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        await await_until(gone, "the grandchild to be killed with its group")

    run(main)


@pytest.mark.parametrize(("proc", "reason"), [
    ("segfault", "child killed by SIGSEGV"),
    ("exit3", "child exited with code 3"),
])
def test_crash_fails_the_job_with_exit_reason_and_replaces_child(
    redis_url: str, proc: str, reason: str
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        rec, _w, before, after = await one_job(redis_url, proc, opts={"attempts": 1})
        assert rec.error_type in ("ChildCrashed",) and reason in rec.failed_reason
        assert before.isdisjoint(after) and len(after) == 1
        assert rec.finished_on_ms - rec.processed_on_ms < 1000  # noticed within a second
        assert loop.time() - began < 30

    run(main)


def test_crash_with_attempts_left_is_retried(redis_url: str) -> None:
    async def main() -> None:
        rec, *_ = await one_job(redis_url, "exit3", opts={"attempts": 2})
        assert rec.attempts_made == 2 and "code 3" in rec.failed_reason

    run(main)


def test_memory_hard_limit_kills_mid_job(redis_url: str) -> None:
    async def main() -> None:
        sb = SandboxSettings(memory_hard_bytes=200 << 20)
        rec, _w, before, after = await one_job(redis_url, "hog_memory", sandbox=sb,
                                               opts={"attempts": 1})
        assert rec.error_type == "MemoryLimitExceeded"
        assert "memory limit exceeded" in rec.failed_reason and "hard limit 200 MiB" in \
            rec.failed_reason
        assert before.isdisjoint(after)

    run(main)


def test_ignoring_sigterm_does_not_save_a_timed_out_child(redis_url: str) -> None:
    async def main() -> None:
        rec, _w, before, after = await one_job(redis_url, "ignore_sigterm",
                                               opts={"timeout": 0.5})
        assert rec.error_type == "JobTimedOut" and before.isdisjoint(after)

    run(main)


def test_processor_failing_at_import_backs_off_and_marks_the_queue(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        q = AsyncQueue("bad", redis_url)
        job = await q.add("j", 1)
        w = Worker("bad", "tests.fixtures.sandbox_broken:fn", url=redis_url, mode="process")
        task = asyncio.create_task(w.run())
        assert w.pool is not None
        await await_until(lambda: w.pool is not None and w.pool.boot_failures >= 3,
                          "three boot failures", timeout=20)
        assert w.pool.started_children == 0  # never used
        assert await job.state() == "wait"  # nothing claimed, nothing lost
        await w.close(2)
        await task
        await q.close()

    caplog.set_level(logging.WARNING, logger="rqsup.pool")
    run(main)
    msgs = [r.getMessage() for r in caplog.records if "failed to boot" in r.getMessage()]
    assert msgs and "RuntimeError: broken on purpose" in msgs[0]
    # backoff, not a spin: 0.5 s, 1 s, 2 s ...
    assert "retrying in 0.5s" in msgs[0] and "retrying in 1.0s" in msgs[1]


def test_programmatic_closure_travels_by_cloudpickle(redis_url: str) -> None:
    factor = 7

    def times(job: Any) -> Any:  # a closure: not importable by name
        return [job.data * factor, os.getpid()]

    async def main() -> None:
        q = AsyncQueue("cp", redis_url)
        w = Worker("cp", times, url=redis_url, mode="process")
        task = asyncio.create_task(w.run())
        value, pid = await q.call("x", 6, timeout=20)
        assert value == 42 and pid != os.getpid()
        await w.close(2)
        await task
        await q.close()

    run(main)


def test_recycling_per_job_isolation_and_max_jobs(redis_url: str) -> None:
    async def pids_for(sb: SandboxSettings, n: int, queue: str) -> list[int]:
        q = AsyncQueue(queue, redis_url)
        w = Worker(queue, P + "pid", url=redis_url, mode="process", sandbox=sb, prefetch=0)
        task = asyncio.create_task(w.run())
        pids = [await q.call("x", i, timeout=20) for i in range(n)]
        await w.close(2)
        await task
        await q.close()
        return pids

    async def main() -> None:
        per_job = await pids_for(SandboxSettings(isolation="per-job"), 3, "iso")
        assert len(set(per_job)) == 3  # a fresh child for every job
        every_two = await pids_for(SandboxSettings(max_jobs_per_child=2), 4, "max")
        assert every_two[0] == every_two[1] != every_two[2] == every_two[3]

    run(main)


def test_idle_child_is_recycled_after_idle_timeout(redis_url: str) -> None:
    async def main() -> None:
        w = Worker("idle", P + "pid", url=redis_url, mode="process",
                   sandbox=SandboxSettings(idle_timeout_s=0.5))
        task = asyncio.create_task(w.run())
        await await_until(lambda: w.pool is not None and w.pool.started_children >= 1, "boot")
        first = child_pids(w)
        await await_until(lambda: w.pool is not None and w.pool.started_children >= 2
                          and child_pids(w) and child_pids(w) != first, "an idle recycle")
        await w.close(2)
        await task

    run(main)

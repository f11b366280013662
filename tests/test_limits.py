"""Queue-wide limits: the rate limit, the global concurrency cap, manual limits
and RateLimited, enforced in the claim script across every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from rqsup import AsyncQueue, InvalidOption, Queue, RateLimited
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import wait_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

ROOT = Path(__file__).resolve().parent.parent


def claim(q: Queue, n: int, worker: str = "w1", idle_ms: int = 0) -> tuple[int, list[str]]:
    reply = q._driver.execute(q.core.script("claim", n, worker, 30_000, idle_ms))
    return int(reply[0]), [i.decode() for i, _t, _f in reply[1:]]


def test_rate_limit_caps_claims_per_window_and_says_when_it_lifts(redis_url: str) -> None:
    q = Queue("rl", redis_url)
    assert q.set_rate_limit(5, 1.0)["max"] == 5
    q.add_bulk([("x", i) for i in range(20)])
    wait_ms, got = claim(q, 20)
    assert len(got) == 5 and 0 < wait_ms <= 1000  # come back when the window ends
    wait_ms, got = claim(q, 20)
    assert got == [] and 0 < wait_ms <= 1000
    assert 0 < q.limits()["limited_for_s"] <= 1.0
    wait_until(lambda: claim(q, 20)[1], "the next window", timeout=3)
    q.remove_rate_limit()
    counts = q.counts()
    got = claim(q, 20)[1]
    assert len(got) > 0 and q.limits()["max"] is None, (counts, q.limits(), got)


def test_a_window_ending_now_opens_a_new_bounded_one(redis_url: str) -> None:
    """Regression: a limiter key found at its last millisecond (or without expiry)
    let one claim take everything; the next window must still be capped."""
    q = Queue("rlb", redis_url)
    q.set_rate_limit(5, 1.0)
    q.add_bulk([("x", i) for i in range(20)])
    limiter = q.core.keys.base + ":limiter"
    q.client.set(limiter, 5)  # a full window that never expires (stale)
    _, got = claim(q, 20)
    assert len(got) == 5
    assert 0 < q.client.pttl(limiter) <= 1000 and q.client.get(limiter) == b"5"


def test_global_concurrency_caps_active_jobs_and_a_finish_wakes_a_waiter(redis_url: str) -> None:
    q = Queue("cc", redis_url)
    q.set_global_concurrency(3)
    q.add_bulk([("x", i) for i in range(10)])
    _, first = claim(q, 10, "a")
    assert len(first) == 3
    assert claim(q, 10, "b")[1] == []  # at the cap, for every worker
    # Finishing one frees a slot and wakes a blocked worker (the marker).
    q.client.delete(q.core.keys.marker)
    rec = q.get_job(first[0])
    assert rec is not None
    token = q.client.hget(q.core.keys.job(first[0]), "token").decode()
    codes, _ = q._driver.execute(q.core.script("complete", 1, 0, "a", 30_000, first[0], token,
                                               '"ok"', -1, -1))
    assert codes == [0] and q.client.zcard(q.core.keys.marker) == 1
    assert len(claim(q, 10, "b")[1]) == 1
    q.set_global_concurrency(None)
    assert len(claim(q, 10, "b")[1]) == 6


def test_manual_limit_and_hand_off_respect_limits(redis_url: str) -> None:
    q = Queue("ml", redis_url)
    q.rate_limit(0.5)
    q.add("x", 1)
    wait_ms, got = claim(q, 5, "w1", idle_ms=5000)  # registers w1 for hand-offs
    assert got == [] and 0 < wait_ms <= 500
    assert q.add("x", 2).state() == "wait"  # no hand-off while limited
    q.rate_limit(0)
    assert len(claim(q, 5)[1]) == 2


def test_limit_arguments_are_checked() -> None:
    q = Queue("bad", "redis://127.0.0.1:1/0")  # never reached: refused before any I/O
    with pytest.raises(InvalidOption, match="max must be an int >= 1"):
        q.set_rate_limit(0, 1)
    with pytest.raises(InvalidOption, match="duration must be > 0"):
        q.set_rate_limit(5, 0)
    with pytest.raises(InvalidOption, match="global concurrency"):
        q.set_global_concurrency(0)
    for bad in (-1, float("nan"), 1e20):
        with pytest.raises(InvalidOption, match="RateLimited delay"):
            RateLimited(bad)


@pytest.mark.parametrize("mode", ["async", "process"])
def test_rate_limited_job_goes_back_without_spending_an_attempt(
    redis_url: str, mode: str
) -> None:
    async def proc(job: ActiveJob) -> Any:
        if job.data["first"] and job.attempts_made == 0 and not seen:
            seen.append(job.id)
            raise RateLimited(0.3)
        return "done"

    seen: list[str] = []

    async def main() -> None:
        q = AsyncQueue(f"rlj-{mode}", redis_url)
        processor: Any = proc if mode == "async" else "tests.fixtures.limit_procs:limited_once"
        w = Worker(q.name, processor, url=redis_url, mode=mode)
        task = asyncio.create_task(w.run())
        job = await q.add("x", {"first": True, "flag": str(Path(os.environ.get(
            "TMPDIR", "/tmp")) / f"rl-{uuid.uuid4().hex}")}, attempts=1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await job.wait(15) == "done"
        rec = await q.get_job(job.id)
        assert rec is not None and rec.attempts_made == 1  # the limited run did not count
        assert loop.time() - began >= 0.25  # the queue waited out the limit
        await w.close(2)
        await task
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- several supervisor processes at once ---------------------------------------------------


def start_supervisors(tmp_path: Path, url: str, queue: str, n: int, extra: str,
                      concurrency: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        cfg = tmp_path / f"s{i}.toml"
        cfg.write_text(f"""
[redis]
url = "{url}"

[supervisor]
name = "lim-{i}-{uuid.uuid4().hex[:6]}"
renew_interval = "1s"
block_timeout = "1s"
shutdown_grace = "5s"

[[queues]]
name = "{queue}"
processor = "tests.fixtures.supervisor_procs:work"
mode = "process"
concurrency = {concurrency}
{extra}
""")
        log = open(tmp_path / f"s{i}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "rqsup"), "start", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ))
    return procs


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def claim_times(q: Queue) -> list[tuple[int, int]]:
    out = []
    for job in q.get_jobs("completed", 0, -1):
        out.append((job.processed_on_ms, job.finished_on_ms))
    return sorted(out)


def test_rate_limit_holds_across_three_supervisors(tmp_path: Path, redis_url: str) -> None:
    qname, limit = f"rl3-{uuid.uuid4().hex[:6]}", 20
    q = Queue(qname, redis_url, default_job_options={"remove_on_complete": False})
    q.add_bulk([("x", {"n": i}) for i in range(1000)])
    procs = start_supervisors(tmp_path, redis_url, qname, 3,
                              f'rate_limit = {{ max = {limit}, duration = "1s" }}', 2)
    try:
        wait_until(lambda: q.counts()["completed"] >= 200, "10 s worth of limited jobs",
                   timeout=30)
    finally:
        stop_all(procs)
    starts = [s for s, _f in claim_times(q)]
    # The limiter opens a 1 s window at the first claim after the last one closed.
    windows: list[int] = []
    window_start = -1
    for t in starts:
        if window_start < 0 or t >= window_start + 1000:
            window_start = t
            windows.append(0)
        windows[-1] += 1
    assert max(windows) <= limit, windows
    assert len(windows) >= 9 and sum(windows) >= 200, windows  # it did run ~10 windows
    q.close()


def test_global_concurrency_is_never_exceeded(tmp_path: Path, redis_url: str) -> None:
    qname, cap = f"gc3-{uuid.uuid4().hex[:6]}", 4
    q = Queue(qname, redis_url, default_job_options={"remove_on_complete": False})
    q.add_bulk([("x", {"n": i, "sleep": 0.15}) for i in range(40)])
    procs = start_supervisors(tmp_path, redis_url, qname, 3, f"global_concurrency = {cap}", 3)
    try:
        wait_until(lambda: q.counts()["completed"] == 40, "all 40 jobs", timeout=60)
    finally:
        stop_all(procs)
    events = sorted([(s, 1) for s, _f in claim_times(q)] + [(f, -1) for _s, f in claim_times(q)],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same ms
    running = peak = 0
    for _t, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= cap, peak
    assert peak >= cap - 1, peak  # 9 slots were offered: the cap, not them, was the limit
    q.close()


def test_queue_limits_in_the_config_are_validated(tmp_path: Path) -> None:
    from rqsup.config.model import load_config
    from rqsup.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[supervisor]
name = "x"
[[queues]]
name = "q"
processor = "m:f"
rate_limit = { max = 0, duration = "1s", burst = 3 }
global_concurrency = 0
""")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "queues[0].rate_limit.max" in text and "queues[0].rate_limit.burst" in text
    assert "queues[0].global_concurrency" in text

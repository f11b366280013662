"""BullMQ 6 semantics where rqsup used to differ (issue 10), against a real redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.crc import key_slot

from rqsup import AsyncQueue, FlowProducer, JobFailed, Queue
from rqsup.errors import ClosedError, InvalidOption, JobStateError
from rqsup.queue.connection import sync_client
from rqsup.queue.flows import FlowCore
from tests.helpers import await_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)


def test_add_returns_the_job_as_stored(redis_url: str) -> None:
    q = Queue("stored", redis_url)
    job = q.add("x", {"a": 1}, delay=1.5, priority=3, attempts=4, job_id="j1")
    stored = q.get_job("j1")
    assert stored is not None
    for attr in ("name", "data", "delay_ms", "priority", "attempts", "attempts_made",
                 "timestamp_ms"):
        assert getattr(job, attr) == getattr(stored, attr), attr
    assert job.delay_ms == 1500 and job.priority == 3 and job.timestamp_ms > 0
    # An existing custom id: the stored job comes back, not this call's data.
    again = q.add("y", {"b": 2}, job_id="j1")
    assert again.add_outcome == "duplicated"
    assert again.name == "x" and again.data == {"a": 1} and again.delay_ms == 1500
    bulk = q.add_bulk([{"name": "b", "data": i, "opts": {"priority": i + 1}} for i in range(3)])
    assert [j.priority for j in bulk] == [1, 2, 3]
    assert all(j.timestamp_ms > 0 for j in bulk)


def test_async_add_returns_the_job_as_stored(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("stored", redis_url)
        job = await q.add("x", 1, delay=0.7, job_id="a1")
        again = await q.add("other", 2, job_id="a1")
        assert job.delay_ms == 700 and again.data == 1 and again.add_outcome == "duplicated"
        await q.close()

    asyncio.run(main())


def test_get_jobs_is_newest_first_and_asc_is_next_to_run_first(redis_url: str) -> None:
    q = Queue("order", redis_url)
    ids = [q.add("w", i).id for i in range(5)]
    assert [j.id for j in q.get_jobs("wait")] == ids[::-1]
    assert [j.id for j in q.get_jobs("wait", asc=True)] == ids
    assert [j.id for j in q.get_jobs("wait", 1, 2)] == [ids[3], ids[2]]
    assert [j.id for j in q.get_jobs("wait", 1, 2, asc=True)] == [ids[1], ids[2]]
    d = [q.add("d", i, delay=10 * (i + 1)).id for i in range(3)]
    assert [j.id for j in q.get_jobs("delayed")] == d[::-1]
    assert [j.id for j in q.get_jobs("delayed", asc=True)] == d
    assert [j.id for j in q.get_jobs(["wait", "delayed"], 0, 0)] == [ids[4], d[2]]


def test_get_jobs_fills_the_range_past_missing_hashes(redis_url: str) -> None:
    q = Queue("fill", redis_url)
    ids = [q.add("w", i).id for i in range(10)]
    # Hashes gone behind the script's back (as after an eviction).
    for gone in ids[5:9]:
        q.client.delete(q.core.keys.job(gone))
    page = q.get_jobs("wait", 0, 2)
    assert [j.id for j in page] == [ids[9], ids[4], ids[3]]
    assert [j.id for j in q.get_jobs("wait", 0, 2, asc=True)] == ids[:3]
    assert len(q.get_jobs("wait")) == 6


def test_get_jobs_refuses_bad_ranges_and_states(redis_url: str) -> None:
    q = Queue("bad", redis_url)
    with pytest.raises(InvalidOption, match="unknown state 'nope'"):
        q.get_jobs("nope")
    with pytest.raises(InvalidOption, match="start must be >= 0"):
        q.get_jobs("wait", -1)
    with pytest.raises(InvalidOption, match="end must be an int"):
        q.get_jobs("wait", 0, "5")  # type: ignore[arg-type]


def test_a_braced_prefix_puts_every_queue_on_one_slot(redis_url: str) -> None:
    a = Queue("alpha", redis_url, prefix="{bull}")
    b = Queue("beta", redis_url, prefix="{bull}")
    assert a.core.keys.base == "{bull}:{alpha}"
    assert key_slot(a.core.keys.wait.encode()) == key_slot(b.core.keys.wait.encode())
    assert key_slot(a.core.keys.job("1").encode()) == key_slot(b"bull")
    job = a.add("x", 1)
    assert a.get_job(job.id) is not None and a.counts()["wait"] == 1
    # A flow across two queues of the braced prefix; the failed reason names
    # the child as <queue>:<id> (the second brace pair, not the prefix's).
    fp = FlowProducer(redis_url, prefix="{bull}")
    node = fp.add({"name": "p", "queue": "alpha",
                   "children": [{"name": "c", "queue": "beta", "data": 2}]})
    assert node.queue == "alpha" and node.children[0].queue == "beta"
    tree = fp.get_flow("alpha", node.id)
    assert tree is not None and tree["children"][0]["queue"] == "beta"
    assert b.get_job(node.children[0].id) is not None
    fp.close()
    for bad in ("{a}{b}", "a}b{", "{}", "x{y"):
        with pytest.raises(ValueError, match="prefix"):
            Queue("q", redis_url, prefix=bad)


def test_queue_events_decode_values_and_wait_for_by_id(redis_url: str) -> None:
    from rqsup import QueueEvents
    from rqsup.supervisor import ActiveJob, Worker

    async def proc(job: ActiveJob) -> Any:
        job.update_progress({"pct": 10})
        if job.data == "bad":
            raise ValueError("nope")
        return {"v": job.data}

    async def main() -> None:
        q = AsyncQueue("ev", redis_url)
        events = QueueEvents("ev", redis_url, last_id="0")
        seen: dict[str, list[Any]] = {"completed": [], "failed": [], "progress": []}
        for name, box in seen.items():
            events.on(name, lambda ev, box=box: box.append(ev))
        reader = asyncio.create_task(events.run())
        w = Worker("ev", proc, url=redis_url)
        wt = asyncio.create_task(w.run())
        good = await q.add("x", 5)
        bad = await q.add("x", "bad", attempts=1)
        assert await events.wait_for(good.id, timeout=10) == {"v": 5}
        with pytest.raises(JobFailed, match="nope"):
            await events.wait_for(bad.id, timeout=10)
        await await_until(lambda: len(seen["failed"]) == 1 and len(seen["completed"]) == 1,
                          "both events")
        done = seen["completed"][0]
        assert done.job_id == good.id and done.fields["returnvalue"] == {"v": 5}
        failed = seen["failed"][0]
        assert failed.fields["reason"] == "nope" and failed.fields["attempts_made"] == 1
        assert seen["progress"][0].fields["progress"] == {"pct": 10}
        # A custom event reaches QueueEvents too.
        got: list[Any] = []
        events.on("report", got.append)
        await q.publish_event("report", {"rows": 3, "who": "etl"})
        await await_until(lambda: got, "the custom event")
        assert got[0].fields == {"rows": "3", "who": "etl"}
        await w.close(5)
        await wt
        await events.close()
        await reader
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_trim_events_has_no_floor(redis_url: str) -> None:
    q = Queue("trim", redis_url)
    for i in range(30):
        q.add("x", i)
    q.publish_event("mine", {"n": 1})
    assert q.trim_events(5) > 0
    assert q.client.xlen(q.core.keys.events) == 5
    q.trim_events(0)
    assert q.client.xlen(q.core.keys.events) == 0
    with pytest.raises(InvalidOption, match="max_len"):
        q.trim_events(-1)
    with pytest.raises(InvalidOption, match="field names"):
        q.publish_event("x", {"event": "no"})


def test_a_closed_producer_refuses_to_write(redis_url: str) -> None:
    client = sync_client(redis_url)
    q = Queue("closed", connection=client)
    q.add("x")
    q.close()
    with pytest.raises(ClosedError, match=r"Queue.*is closed"):
        q.add("y")
    with pytest.raises(ClosedError):
        q.wait_for("1", timeout=1)
    fp = FlowProducer(redis_url)
    fp.close()
    with pytest.raises(ClosedError, match=r"FlowProducer.*is closed"):
        fp.add({"name": "p", "queue": "closed"})
    assert client.llen(Queue("closed", connection=client).core.keys.wait) == 1

    async def main() -> None:
        aq = AsyncQueue("closed", redis_url)
        await aq.close()
        with pytest.raises(ClosedError):
            await aq.add("z")
        from rqsup import AsyncFlowProducer
        afp = AsyncFlowProducer(redis_url)
        await afp.close()
        with pytest.raises(ClosedError):
            await afp.add({"name": "p", "queue": "closed"})

    asyncio.run(main())


# -- helpers that drive the scripts as a worker would -------------------------------------


def claim(q: Queue, n: int = 10, lease_ms: int = 30_000) -> list[tuple[str, str]]:
    reply = q._driver.execute(q.core.script("claim", n, "w1", lease_ms))
    return [(i.decode(), t.decode()) for i, t, _f in reply[1:]]


def fail(q: Queue, job_id: str, token: str, reason: str = "bad") -> int:
    return int(q._driver.execute(q.core.script(
        "fail", 1, job_id, token, reason, "ValueError", "", -1, 5, -1, ""))[0])


def test_a_job_failed_by_the_stall_limit_counts_the_attempt_and_its_own_retention(
        redis_url: str) -> None:
    q = Queue("stall", redis_url)
    kept = q.add("x", remove_on_fail=False)
    gone = q.add("x", remove_on_fail=True)
    claim(q, 2)
    for member in q.client.zrange(q.core.keys.active, 0, -1):
        q.client.zadd(q.core.keys.active, {member: 0})  # the leases expired
    # max_stalled_count 0, the worker's default retention keeps 5
    q._driver.execute(q.core.script("sweep_stalled", 0, 0, 0, 100, 5, -1))
    job = q.get_job(kept.id)
    assert job is not None and job.state() == "failed"
    assert job.attempts_made == 1 and job.error_type == "Stalled"
    assert q.get_job(gone.id) is None  # its own remove_on_fail, not the default


def test_a_parent_failed_by_a_child_keeps_its_retention_and_releases_its_dedup_key(
        redis_url: str) -> None:
    q = Queue("pf", redis_url)
    step = q.add("step", remove_on_fail=True, dedup="once")
    kept = q.add("step2", remove_on_fail=False, dedup="twice")
    grants = dict(claim(q, 2))
    for jid in (step.id, kept.id):
        args = FlowCore().children_args("pf", [{"name": "c"}])
        assert int(q._driver.execute(q.core.script("add_children", jid, grants[jid], 1,
                                                   *args))) == 0
        assert int(q._driver.execute(q.core.script("move_to_waiting_children", jid,
                                                   grants[jid], -1, -1))) == 1
    for cid, ctok in claim(q):
        assert fail(q, cid, ctok) == 3
    assert q.get_job(step.id) is None  # remove_on_fail=True applies to the parent
    parent = q.get_job(kept.id)
    assert parent is not None and parent.state() == "failed"
    assert parent.error_type == "ChildFailed" and parent.finished_on_ms
    assert q.get_dedup_job_id("once") is None and q.get_dedup_job_id("twice") is None
    again = q.add("step", dedup="once")
    assert again.add_outcome == "created"


def test_failure_policy_continue_runs_the_parent_at_once(redis_url: str) -> None:
    q = Queue("cont", redis_url)
    fp = FlowProducer(redis_url)
    node = fp.add({"name": "p", "queue": "cont", "children": [
        {"name": "a", "opts": {"failure_policy": "continue"}},
        {"name": "b"}]})
    parent = q.get_job(node.id)
    assert parent is not None and parent.state() == "waiting-children"
    a = next(c for c in node.children if c.name == "a")
    grants = dict(claim(q))
    assert fail(q, a.id, grants[a.id], "a broke") == 3
    assert parent.state() == "wait"  # b is still active, the parent runs now
    assert q.get_job(node.id).get_failed_children_values() == {  # type: ignore[union-attr]
        f"cont:{a.id}": "a broke"}
    fp.close()


def test_a_delayed_job_due_while_paused_moves_to_wait(redis_url: str) -> None:
    from rqsup.supervisor import ActiveJob, Worker

    async def proc(job: ActiveJob) -> None:
        return None

    async def main() -> None:
        q = AsyncQueue("pd", redis_url)
        await q.pause()
        # A long block: without a wake the worker would not look again for 30 s.
        w = Worker("pd", proc, url=redis_url, block_timeout_s=30)
        wt = asyncio.create_task(w.run())
        await await_until(lambda: w.pump.idle.is_set(), "the worker blocks")
        for _ in range(3):
            job = await q.add("d", delay=0.2)
            await await_until(lambda job=job: _state_is(q, job.id, "wait"),
                              "the due job moved to wait", timeout=5)
        assert (await q.counts())["wait"] == 3 and w.processed == 0
        await w.close(5)
        await wt
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def _state_is(q: AsyncQueue, job_id: str, state: str) -> bool:
    return bool(await q._driver.drive(q.core.op_state(job_id)) == state)


def test_retry_keeps_or_resets_the_attempt_counters_and_retries_completed(
        redis_url: str) -> None:
    q = Queue("rt", redis_url)
    a = q.add("x", attempts=1, remove_on_fail=False, remove_on_complete=False)
    b = q.add("x", attempts=1, remove_on_fail=False)
    for jid, tok in claim(q):
        fail(q, jid, tok)
    a.retry()
    assert a.refresh().attempts_made == 1 and a.attempts_started == 1
    b.retry(reset_attempts_made=True, reset_attempts_started=True)
    assert b.refresh().attempts_made == 0 and b.attempts_started == 0
    grants = dict(claim(q))
    q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000, a.id, grants[a.id],
                                    '"ok"', -1, -1))
    with pytest.raises(JobStateError, match="completed"):
        a.retry()  # state defaults to failed
    a.retry("completed")
    assert a.state() == "wait" and a.refresh().return_value is None
    assert a.attempts_made == 2  # each finished attempt counts, as in BullMQ


def test_retry_jobs_takes_count_and_a_timestamp(redis_url: str) -> None:
    q = Queue("rj", redis_url)
    jobs = [q.add("x", attempts=1, remove_on_fail=False) for _ in range(4)]
    for jid, tok in claim(q):
        fail(q, jid, tok)
    finished = sorted(j.refresh().finished_on_ms or 0 for j in jobs)
    assert q.retry_jobs(timestamp=(finished[0] - 1) / 1000) == 0
    assert q.retry_jobs(count=1) == 1
    assert q.retry_jobs(timestamp=finished[-1] / 1000) == 3
    assert q.counts()["wait"] == 4
    with pytest.raises(InvalidOption, match="count"):
        q.retry_jobs(count=0)
    with pytest.raises(InvalidOption, match="retry state"):
        q.retry_jobs("wait")


# -- getters ------------------------------------------------------------------------------


def test_get_workers_lists_a_standalone_worker_and_what_it_runs(redis_url: str) -> None:
    from rqsup.supervisor import ActiveJob, Worker

    release = asyncio.Event()

    async def proc(job: ActiveJob) -> None:
        await release.wait()

    async def main() -> None:
        q = AsyncQueue("gw", redis_url)
        assert await q.get_workers() == [] and await q.get_workers_count() == 0
        w = Worker("gw", proc, url=redis_url, concurrency=2)
        wt = asyncio.create_task(w.run())
        job = await q.add("x")
        [listed] = await await_until(
            lambda: _workers_running(q, job.id), "get_workers showing the running job")
        assert listed["name"] == w.worker_id and listed["kind"] == "worker"
        assert listed["concurrency"] == 2 and listed["mode"] == "async"
        assert listed["host"] and listed["pid"] and listed["started_at"]
        assert await AsyncQueue("other", redis_url).get_workers() == []
        release.set()
        await w.close(5)
        await wt
        assert await q.get_workers() == []  # gone with the worker, not at its TTL
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def _workers_running(q: AsyncQueue, job_id: str) -> list[dict[str, Any]]:
    return [w for w in await q.get_workers() if job_id in w["jobs"]]


def test_counts_per_priority_logs_rate_limit_ttl_and_schedulers_count(redis_url: str) -> None:
    q = Queue("gp", redis_url)
    for p in (0, 0, 1, 3, 3, 3):
        q.add("x", priority=p)
    q.add("x", priority=3, lifo=True)
    assert q.get_counts_per_priority([0, 1, 2, 3]) == {0: 2, 1: 1, 2: 0, 3: 4}
    with pytest.raises(InvalidOption, match="priority"):
        q.get_counts_per_priority([-1])
    [(jid, tok)] = claim(q, 1)
    q._driver.execute(q.core.script("log", jid, tok, 10, 1, "one", "two", "three"))
    assert q.get_job_logs(jid) == {"logs": ["one", "two", "three"], "count": 3}
    assert q.get_job_logs(jid, 0, 1) == {"logs": ["one", "two"], "count": 3}
    assert q.get_job_logs(jid, 0, 0, asc=False) == {"logs": ["three"], "count": 3}
    assert q.get_job_logs("nope") == {"logs": [], "count": 0}
    assert q.get_rate_limit_ttl() == 0
    q.rate_limit(30)
    assert 29 < q.get_rate_limit_ttl() <= 30
    q.rate_limit(0)
    q.set_rate_limit(1, 60)
    [(_jid2, _tok)] = claim(q, 1)  # the one claim of the window
    assert 59 < q.get_rate_limit_ttl() <= 60
    assert q.get_schedulers_count() == 0
    q.upsert_scheduler("every", every=60)
    q.upsert_scheduler("cron", cron="0 * * * *")
    assert q.get_schedulers_count() == 2


def test_state_counts_remove_and_global_concurrency_getters(redis_url: str) -> None:
    q = Queue("gs", redis_url)
    job = q.add("x")
    q.add("y", delay=60)
    assert q.get_job_state(job.id) == "wait" and q.get_job_state("nope") == "unknown"
    assert q.get_job_counts("wait", "delayed") == {"wait": 1, "delayed": 1}
    assert set(q.get_job_counts()) >= {"wait", "active", "completed", "failed"}
    with pytest.raises(InvalidOption, match="unknown states"):
        q.get_job_counts("waiting")
    q.remove(job.id)
    assert q.get_job(job.id) is None
    assert q.get_global_concurrency() is None
    q.set_global_concurrency(4)
    assert q.get_global_concurrency() == 4
    q.remove_global_concurrency()
    assert q.get_global_concurrency() is None


def test_async_twins_of_the_new_getters_and_actions(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("tw", redis_url)
        a = await q.add("x", priority=2, attempts=1, remove_on_fail=False)
        b = await q.add("x", delay=60)
        assert await q.get_counts_per_priority([0, 2]) == {0: 0, 2: 1}
        assert await q.get_job_state(a.id) == "prioritized"
        assert await q.get_job_counts("delayed") == {"delayed": 1}
        assert await q.get_rate_limit_ttl() == 0
        assert await q.get_job_logs(a.id) == {"logs": [], "count": 0}
        assert await q.cancel(b.id, "async") == "failed"
        assert (await q.get_job(b.id)) is None or (await q.get_job_state(b.id)) == "failed"
        await q.publish_event("note", {"k": "v"})
        assert await q.trim_events(1) >= 1
        assert await q.get_workers_count() == 0 and await q.get_schedulers_count() == 0
        assert await a.get_dependencies_count() == {"processed": 0, "unprocessed": 0,
                                                    "failed": 0, "ignored": 0}
        assert await a.get_children_values() == {}
        assert await a.remove_unprocessed_children() == 0
        assert await q.get_global_concurrency() is None
        assert await q.retry_jobs() == 1  # b, failed by the cancel
        await q.remove(a.id)
        assert await q.get_job(a.id) is None
        await q.close()

    asyncio.run(main())


# -- per-minute history (issue 11) --------------------------------------------------------


def test_history_counts_and_buckets_per_minute(redis_url: str) -> None:
    q = Queue("hist", redis_url)
    for i in range(4):
        q.add("x", i, attempts=1, remove_on_fail=False)
    grants = claim(q)
    for jid, tok in grants[:3]:
        q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000, jid, tok, '"ok"',
                                        -1, -1))
    fail(q, *grants[3])
    done = q.get_metrics("completed", 0, 0)
    assert done["data"] == [3] and done["count"] == 3 and len(done["minutes"]) == 1
    assert q.get_metrics("failed", 0, 0)["count"] == 1
    run = q.get_metrics("run", 0, 0)
    assert run["count"] == 4 and run["data"][0]["<=10ms"] + run["data"][0]["<=100ms"] == 4
    assert q.get_metrics("wait", 0, 0)["count"] == 4
    week = q.get_metrics("completed")
    assert len(week["data"]) == 7 * 1440 and week["count"] == 3
    key = q.core.keys.history(done["minutes"][0])
    assert 7 * 86_400 <= q.client.ttl(key) <= 7 * 86_400 + 60  # bounded: it expires
    q.set_history(0)  # off: nothing more is written
    q.add("y")
    [(jid, tok)] = claim(q)
    q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000, jid, tok, '"ok"', -1, -1))
    assert q.get_metrics("completed", 0, 0)["count"] == 3
    with pytest.raises(InvalidOption, match="kind must be"):
        q.get_metrics("done")
    with pytest.raises(InvalidOption, match="range"):
        q.get_metrics("run", 5, 2)

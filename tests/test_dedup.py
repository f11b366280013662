"""Deduplication against a real redis-server: the three modes, bulk adds,
concurrent adders, and every path that releases (or keeps) a dedup key."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rqsup import AsyncQueue, InvalidOption, Job, Queue
from rqsup.queue import codec
from rqsup.queue.events import Event, parse_entries
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import wait_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

KEEP = (-1, -1)  # keep_count, keep_age_ms: keep finished jobs


# -- helpers -------------------------------------------------------------------


def claim(q: Queue, n: int = 1, lease_ms: int = 30_000) -> list[tuple[str, str]]:
    reply = q._driver.execute(q.core.script("claim", n, "w1", lease_ms))
    return [(codec.text(i), codec.text(t)) for i, t, _f in reply[1:]]


def complete(q: Queue, job_id: str, token: str, keep: tuple[int, int] = KEEP) -> None:
    codes, _claim = q._driver.execute(
        q.core.script("complete", 1, 0, "w1", 30_000, job_id, token, '"ok"', *keep))
    assert [int(c) for c in codes] == [0]


def fail(q: Queue, job_id: str, token: str, retry_delay_ms: int) -> int:
    [code] = q._driver.execute(q.core.script(
        "fail", 1, job_id, token, "boom", "ValueError", "", retry_delay_ms, *KEEP, ""))
    return int(code)


def sweep(q: Queue, max_stalled: int) -> list[Any]:
    reply: list[Any] = q._driver.execute(
        q.core.script("sweep_stalled", 0, max_stalled, 0, 1000, *KEEP))
    return reply


def events(q: Queue, name: str | None = None) -> list[Event]:
    got = parse_entries(q.client.xrange(q.core.keys.events) or [])
    return [e for e in got if name is None or e.name == name]


def due_in_ms(q: Queue, job_id: str) -> float:
    score = q.client.zscore(q.core.keys.delayed, job_id)
    assert score is not None, f"job {job_id} is not delayed"
    now_s, now_us = q.client.time()
    return score - (now_s * 1000 + now_us // 1000)


# -- options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dedup", "extra", "message"),
    [
        (5, {}, "dedup must be an id"),
        ({"ttl": 5}, {}, "dedup needs an id"),
        ({"id": ""}, {}, "non-empty"),
        ({"id": "a\nb"}, {}, "must not contain"),
        ({"id": "x" * 201}, {}, "longer than 200"),
        ({"id": "x", "window": 3}, {}, "unknown keys"),
        ({"id": "x", "mode": "forever"}, {}, "dedup mode must be one of"),
        ({"id": "x", "mode": "ttl"}, {}, "needs a ttl > 0"),
        ({"id": "x", "ttl": 0}, {}, "needs a ttl > 0"),
        ({"id": "x", "ttl": -1}, {}, "dedup ttl must be >= 0"),
        ({"id": "x", "ttl": 5, "mode": "until_done"}, {}, "only to mode 'ttl'"),
        ({"id": "x", "ttl": 5, "mode": "debounce"}, {"delay": 5}, "debounce window is the job's"),
        ({"id": "x", "mode": "debounce"}, {}, "needs delay > 0"),
    ],
)
def test_bad_dedup_options_are_refused_before_anything_is_written(
    redis_url: str, dedup: Any, extra: dict[str, Any], message: str
) -> None:
    q = Queue("d", redis_url)
    with pytest.raises(InvalidOption, match=message):
        q.add("x", 1, dedup=dedup, **extra)
    with pytest.raises(InvalidOption, match=f"bulk job #1: .*{message}"):
        q.add_bulk([("x", 1), {"name": "x", "data": 2, "opts": {"dedup": dedup, **extra}}])
    assert q.client.keys("*") == []


def test_dedup_cannot_be_a_queue_wide_default(redis_url: str) -> None:
    with pytest.raises(InvalidOption, match="queue-wide default"):
        Queue("d", redis_url, default_job_options={"dedup": "x"})


def test_dedup_options_are_normalised_and_stored(redis_url: str) -> None:
    q = Queue("d", redis_url)
    a = q.add("x", dedup="user:7")
    b = q.add("x", dedup={"id": "t", "ttl": 1.5})
    c = q.add("x", delay=10, dedup={"id": "d", "mode": "debounce"})
    got = [q.get_job(j.id) for j in (a, b, c)]
    assert [j.options.dedup for j in got if j] == [
        {"id": "user:7", "mode": "until_done"},
        {"id": "t", "mode": "ttl", "ttl_ms": 1500},
        {"id": "d", "mode": "debounce"},
    ]
    assert [j.dedup_id for j in got if j] == ["user:7", "t", "d"]
    assert q.client.get("rqsup:{d}:dedup:user:7") == a.id.encode()
    assert 0 < q.client.pttl(q.core.keys.dedup("t")) <= 1500
    assert q.client.pttl(q.core.keys.dedup("d")) == -1  # until the job ends


# -- mode until_done -------------------------------------------------------------


def test_until_done_keeps_one_job_until_it_completes(redis_url: str) -> None:
    # Given a job holding dedup id "report-7"
    q = Queue("u", redis_url)
    first = q.add("report", {"v": 1}, dedup="report-7")
    assert first.add_outcome == "created" and not first.deduplicated
    # When the same id is added again, while it waits and while it runs
    again = q.add("report", {"v": 2}, dedup="report-7")
    [(job_id, token)] = claim(q)
    running = q.add("report", {"v": 3}, dedup="report-7", job_id="custom-3")
    # Then nothing is created: each add returns the kept job, with its data
    for dup in (again, running):
        assert dup.id == first.id and dup.deduplicated and dup.add_outcome == "deduplicated"
        assert dup.data == {"v": 1}
    assert q.get_job("custom-3") is None
    assert q.counts()["wait"] == 0 and q.counts()["active"] == 1
    assert q.get_dedup_job_id("report-7") == first.id
    assert [(e.job_id, e.fields) for e in events(q, "deduplicated")] == [
        (first.id, {"dedup_id": "report-7", "rejected": "", "debounced": "0"}),
        (first.id, {"dedup_id": "report-7", "rejected": "custom-3", "debounced": "0"}),
    ]
    assert q.client.get(q.core.keys.id) == b"1"  # deduplicated adds spend no auto id
    # When the job completes, the key is released: the next add creates a job
    complete(q, job_id, token)
    assert q.get_dedup_job_id("report-7") is None
    fresh = q.add("report", {"v": 4}, dedup="report-7")
    assert fresh.add_outcome == "created" and fresh.id == "2"
    assert q.get_dedup_job_id("report-7") == "2"


def test_until_done_survives_retries_and_is_released_by_the_final_failure(
    redis_url: str,
) -> None:
    q = Queue("u", redis_url)
    job = q.add("x", dedup="k", attempts=3)
    [(jid, tok)] = claim(q)
    assert fail(q, jid, tok, 0) == 1  # retried now: the key stays
    assert q.add("x", dedup="k").deduplicated
    [(jid, tok)] = claim(q)
    assert fail(q, jid, tok, 60_000) == 2  # retried later (delayed): still held
    assert q.add("x", dedup="k").id == job.id
    q.client.zadd(q.core.keys.delayed, {jid: 0})  # due now
    [(jid, tok)] = claim(q)
    assert fail(q, jid, tok, -1) == 3  # failed for good
    assert q.get_dedup_job_id("k") is None
    assert q.add("x", dedup="k").add_outcome == "created"


def test_a_stale_key_naming_a_vanished_job_is_taken_over(redis_url: str) -> None:
    q = Queue("u", redis_url)
    q.client.set(q.core.keys.dedup("k"), "ghost")  # e.g. left by a hand deletion
    job = q.add("x", dedup="k")
    assert job.add_outcome == "created" and q.get_dedup_job_id("k") == job.id


def test_removing_the_key_by_hand_lets_the_next_add_create(redis_url: str) -> None:
    q = Queue("u", redis_url)
    first = q.add("x", dedup="k")
    assert q.remove_dedup_key("k") is True
    assert q.remove_dedup_key("k") is False
    second = q.add("x", dedup="k")
    assert second.add_outcome == "created" and first.state() == "wait"
    # The job-level call releases the key only while that job holds it.
    assert first.remove_dedup_key() is False and q.get_dedup_job_id("k") == second.id
    assert second.remove_dedup_key() is True and q.get_dedup_job_id("k") is None
    assert q.get_job(second.id).remove_dedup_key() is False  # type: ignore[union-attr]


# -- mode ttl (throttle) -------------------------------------------------------------


def test_ttl_throttles_within_the_window_even_after_the_job_finished(redis_url: str) -> None:
    # Given a job added with a throttle window, completed and deleted at once
    q = Queue("t", redis_url)
    first = q.add("ping", 1, dedup={"id": "p", "ttl": 30}, remove_on_complete=True)
    [(jid, tok)] = claim(q)
    complete(q, jid, tok, keep=(0, -1))
    assert q.get_job(first.id) is None
    # When the id is added again within the window
    again = q.add("ping", 2, dedup={"id": "p", "ttl": 30})
    # Then it is deduplicated: the window holds, naming the (gone) job
    assert again.id == first.id and again.deduplicated and again.raw == {}
    assert q.counts()["wait"] == 0
    assert 0 < q.client.pttl(q.core.keys.dedup("p")) <= 30_000


def test_ttl_after_the_window_creates_even_if_the_first_is_unfinished(redis_url: str) -> None:
    q = Queue("t", redis_url)
    first = q.add("ping", 1, dedup={"id": "p", "ttl": 0.2})
    assert q.add("ping", 2, dedup={"id": "p", "ttl": 0.2}).deduplicated
    wait_until(lambda: q.get_dedup_job_id("p") is None, "the window to end", timeout=5)
    second = q.add("ping", 3, dedup={"id": "p", "ttl": 0.2})
    assert second.add_outcome == "created" and second.id != first.id
    assert q.counts()["wait"] == 2  # at most one job per window, not one at a time


def test_ttl_key_is_released_when_its_job_is_removed(redis_url: str) -> None:
    q = Queue("t", redis_url)
    job = q.add("ping", dedup={"id": "p", "ttl": 60})
    job.remove()
    assert q.get_dedup_job_id("p") is None


# -- mode debounce -----------------------------------------------------------------


def test_debounce_replaces_the_pending_job_and_moves_its_due_time(redis_url: str) -> None:
    # Given a debounced job due in an hour
    q = Queue("b", redis_url)
    opts: dict[str, Any] = {"dedup": {"id": "reindex-7", "mode": "debounce"}}
    first = q.add("reindex", {"rev": 1}, delay=3600, **opts)
    assert first.add_outcome == "created" and due_in_ms(q, first.id) > 3_500_000
    created_ms = first.refresh().timestamp_ms
    # When newer adds arrive (another name, priority and a shorter delay)
    q.add("reindex", {"rev": 2}, delay=3600, **opts)
    last = q.add("reindex-full", {"rev": 3}, delay=60, priority=4, attempts=2, **opts)
    # Then the same job holds the latest name, data and options, due at the new delay
    assert last.id == first.id and last.add_outcome == "debounced" and last.deduplicated
    assert last.data == {"rev": 3}
    job = q.get_job(first.id)
    assert job is not None and job.data == {"rev": 3} and job.name == "reindex-full"
    assert (job.priority, job.attempts, job.delay_ms) == (4, 2, 60_000)
    assert job.options.delay_ms == 60_000 and job.timestamp_ms == created_ms
    assert 55_000 < due_in_ms(q, first.id) <= 60_000
    assert q.counts()["delayed"] == 1
    assert [e.fields["debounced"] for e in events(q, "deduplicated")] == ["1", "1"]


def test_debounce_runs_the_last_data_once_the_adds_stop(redis_url: str) -> None:
    q = Queue("b", redis_url)
    opts: dict[str, Any] = {"dedup": {"id": "k", "mode": "debounce"}}
    job = q.add("x", {"n": 0}, delay=3600, **opts)
    q.add("x", {"n": 1}, delay=0.05, **opts)  # the due time moves earlier too
    got: list[tuple[str, str]] = wait_until(lambda: claim(q), "the debounced job to be due")
    assert got[0][0] == job.id and q.get_job(job.id).data == {"n": 1}  # type: ignore[union-attr]


def test_debounce_once_the_job_left_delayed_starts_a_new_job(redis_url: str) -> None:
    # Given a debounced job that became ready (promoted), and a newer add
    q = Queue("b", redis_url)
    opts: dict[str, Any] = {"dedup": {"id": "k", "mode": "debounce"}}
    first = q.add("x", {"n": 1}, delay=3600, **opts)
    first.promote()
    second = q.add("x", {"n": 2}, delay=3600, attempts=2, **opts)
    # Then the newer data gets its own job, which takes the key
    assert second.add_outcome == "created" and second.id != first.id
    assert q.get_dedup_job_id("k") == second.id
    assert q.get_job(first.id).data == {"n": 1}  # type: ignore[union-attr]
    # And when the first finishes, the key (now the second's) stays
    [(jid, tok)] = claim(q)
    complete(q, jid, tok)
    assert q.get_dedup_job_id("k") == second.id
    # A job waiting out a retry backoff has started: not replaced either
    q.client.zadd(q.core.keys.delayed, {second.id: 0})
    [(jid, tok)] = claim(q)
    assert jid == second.id and fail(q, jid, tok, 3_600_000) == 2
    third = q.add("x", {"n": 3}, delay=3600, attempts=2, **opts)
    assert third.add_outcome == "created"
    assert q.get_job(second.id).data == {"n": 2}  # type: ignore[union-attr]


def test_until_done_add_does_not_replace_a_debounced_job(redis_url: str) -> None:
    q = Queue("b", redis_url)
    first = q.add("x", {"n": 1}, delay=3600, dedup={"id": "k", "mode": "debounce"})
    again = q.add("x", {"n": 2}, delay=5, dedup="k")
    assert again.add_outcome == "deduplicated" and again.data == {"n": 1}
    assert q.get_job(first.id).data == {"n": 1}  # type: ignore[union-attr]


# -- bulk, hand-off, async ---------------------------------------------------------------


def test_bulk_dedups_per_job_including_within_one_bulk(redis_url: str) -> None:
    q = Queue("k", redis_url)
    debounce = {"id": "deb", "mode": "debounce"}
    jobs = q.add_bulk([
        ("a", 1, {"dedup": "same"}),
        ("b", 2, {"dedup": "same"}),
        ("c", 3, {"dedup": "other"}),
        ("d", 4, {"dedup": debounce, "delay": 60}),
        ("e", 5, {"dedup": debounce, "delay": 60}),
        ("f", 6),
    ])
    assert [j.add_outcome for j in jobs] == [
        "created", "deduplicated", "created", "created", "debounced", "created"]
    assert jobs[1].id == jobs[0].id and jobs[1].data == 1
    assert jobs[4].id == jobs[3].id and jobs[4].data == 5 and jobs[4].name == "e"
    assert [j.id for j in jobs if j.add_outcome == "created"] == ["1", "2", "3", "4"]
    assert q.counts()["wait"] == 3 and q.counts()["delayed"] == 1


def test_hand_off_of_a_dedup_job_keeps_the_key(redis_url: str) -> None:
    q = Queue("h", redis_url)
    q._driver.execute(q.core.script("claim", 1, "w1", 30_000, 5_000))  # an idle worker
    job = q.add("x", dedup="k")
    assert job.state() == "active"
    assert q.add("x", dedup="k").id == job.id
    [(jid, token)] = claim(q)  # from the inbox
    assert jid == job.id
    complete(q, jid, token)
    assert q.get_dedup_job_id("k") is None


def test_async_queue_dedups_too(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("a", redis_url)
        first = await q.add("x", 1, dedup="k")
        again = await q.add("x", 2, dedup="k")
        assert again.id == first.id and again.deduplicated and again.data == 1
        assert await q.get_dedup_job_id("k") == first.id
        assert await again.remove_dedup_key() is True
        assert await q.remove_dedup_key("k") is False
        bulk = await q.add_bulk([("y", 1, {"dedup": "b"}), ("y", 2, {"dedup": "b"})])
        assert [j.add_outcome for j in bulk] == ["created", "deduplicated"]
        await q.close()

    asyncio.run(main())


def test_a_worker_completing_the_job_releases_the_key(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        return job.data

    async def main() -> None:
        q = AsyncQueue("wk", redis_url)
        w = Worker("wk", proc, url=redis_url)
        task = asyncio.create_task(w.run())
        assert await q.call("x", {"n": 1}, timeout=10, dedup="k") == {"n": 1}
        assert await q.get_dedup_job_id("k") is None
        await w.close(5)
        await task
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- every path that ends a job releases the key -------------------------------------------


def test_release_on_remove_clean_drain_and_obliterate(redis_url: str) -> None:
    q = Queue("r", redis_url)
    held = q.core.keys.dedup
    q.add("x", dedup="removed", delay=60).remove()
    assert not q.client.exists(held("removed"))
    q.add("x", dedup="cleaned")
    assert q.clean(0, 10, "wait") and not q.client.exists(held("cleaned"))
    q.add("x", dedup="drained")
    q.add("x", dedup="drained-delayed", delay=60)
    assert q.drain() == 1 and not q.client.exists(held("drained"))
    assert q.client.exists(held("drained-delayed"))
    assert q.drain(delayed=True) == 1 and not q.client.exists(held("drained-delayed"))
    for i in range(3):
        q.add("x", dedup=f"o{i}", delay=60 * i)
    claim(q)
    q.add("x", dedup={"id": "window", "ttl": 60})
    q.obliterate(force=True)
    assert q.client.keys("*") == []


def test_stall_requeue_keeps_the_key_and_stall_failure_releases_it(redis_url: str) -> None:
    q = Queue("s", redis_url)
    job = q.add("x", dedup="k")
    claim(q, lease_ms=1)
    wait_until(lambda: sweep(q, max_stalled=1)[1], "a stall requeue")
    assert job.state() == "wait" and q.get_dedup_job_id("k") == job.id
    claim(q, lease_ms=1)
    wait_until(lambda: sweep(q, max_stalled=1)[2], "a stall failure")
    assert job.state() == "failed" and q.get_dedup_job_id("k") is None


def test_clean_of_a_finished_job_ends_its_throttle_window(redis_url: str) -> None:
    q = Queue("r", redis_url)
    q.add("x", dedup={"id": "w", "ttl": 60})
    [(jid, tok)] = claim(q)
    complete(q, jid, tok)
    assert q.get_dedup_job_id("w") == jid  # finished: the window stays
    assert q.clean(0, 10, "completed") == [jid]
    assert q.get_dedup_job_id("w") is None  # deleted: the window goes with it


# -- races ---------------------------------------------------------------------------------


def race(redis_url: str, queue: str, adders: int, adds_each: int, add: Any) -> list[list[Job]]:
    """``adders`` threads, each with its own connection, start together and call
    ``add(queue, thread, i)`` ``adds_each`` times; returns each thread's jobs."""
    barrier = threading.Barrier(adders, timeout=10)
    results: list[list[Job]] = [[] for _ in range(adders)]
    errors: list[BaseException] = []

    def run(t: int) -> None:
        q = Queue(queue, redis_url)
        try:
            barrier.wait()
            for i in range(adds_each):
                results[t].append(add(q, t, i))
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            q.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(adders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors, errors
    return results


@pytest.mark.parametrize("dedup", ["k", {"id": "k", "ttl": 60}])
def test_concurrent_adders_create_exactly_one_job(redis_url: str, dedup: Any) -> None:
    # Given 8 threads adding with one dedup id at once, 25 times each
    results = race(redis_url, "race", 8, 25, lambda q, t, i: q.add("x", {"t": t, "i": i},
                                                                    dedup=dedup))
    jobs = [j for per_thread in results for j in per_thread]
    q = Queue("race", redis_url)
    # Then one job exists, and every caller was told its id
    created = [j for j in jobs if j.add_outcome == "created"]
    assert len(created) == 1 and len(jobs) == 200
    assert {j.id for j in jobs} == {created[0].id}
    assert q.counts()["wait"] == 1 and q.get_dedup_job_id("k") == created[0].id
    assert {codec.encode(j.data, "d") for j in jobs} == {codec.encode(created[0].data, "d")}
    assert len(events(q, "added")) == 1
    assert len(events(q, "deduplicated")) == len(jobs) - 1


def test_concurrent_debounce_adders_leave_one_job_with_the_last_writers_data(
    redis_url: str,
) -> None:
    # Given 8 threads debouncing one id at once; each add is tagged by its custom job id
    def add(q: Queue, t: int, i: int) -> Job:
        tag = f"t{t}-{i}"
        return q.add("x", {"tag": tag}, job_id=tag, delay=3600,
                     dedup={"id": "k", "mode": "debounce"})

    results = race(redis_url, "deb", 8, 20, add)
    jobs = [j for per_thread in results for j in per_thread]
    q = Queue("deb", redis_url)
    # Then there is one job, every add names it, and every add after the first replaced it
    [kept] = {j.id for j in jobs}
    counts = q.counts()
    assert counts["delayed"] == 1 and sum(counts.values()) == 1
    assert sorted(j.add_outcome for j in jobs) == ["created"] + ["debounced"] * 159
    stream = [e for e in events(q) if e.name in ("added", "deduplicated")]
    assert len(stream) == 160 and stream[0].name == "added" and stream[0].job_id == kept
    assert all(e.fields["debounced"] == "1" for e in stream[1:])
    # And its data is that of the add applied last (the last event names it)
    last_tag = stream[-1].fields["rejected"]
    final = q.get_job(kept)
    assert final is not None and final.data == {"tag": last_tag}
    # Each add got the kept job back with its own data in it (applied atomically)
    for t, per_thread in enumerate(results):
        assert [j.data for j in per_thread] == [{"tag": f"t{t}-{i}"} for i in range(20)]
    assert 3_500_000 < due_in_ms(q, kept) <= 3_600_000

"""The producer API against a real redis-server: states, options, admin operations."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from rqsup import AsyncQueue, EncodeError, InvalidOption, JobNotFound, JobStateError, Queue
from rqsup.queue.scripts import SCRIPTS

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)


def claim(q: Queue, n: int = 1, worker: str = "w1", lease_ms: int = 30_000) -> list[Any]:
    reply = q._driver.execute(q.core.script("claim", n, worker, lease_ms))
    return [(i.decode(), t.decode()) for i, t, _f in reply[1:]]


def test_every_script_has_a_header_naming_keys_argv_returns() -> None:
    for name, script in SCRIPTS.items():
        for part in ("KEYS:", "ARGV:", "Returns:", "Events:"):
            assert part in script.source, f"{name}.lua header lacks {part}"


def test_add_returns_ids_and_jobs_land_in_their_states(redis_url: str) -> None:
    # Given a queue
    q = Queue("orders", redis_url)
    # When jobs are added plain, prioritized and delayed
    a = q.add("send", {"to": "a"})
    b = q.add("send", {"to": "b"}, priority=3)
    c = q.add("send", {"to": "c"}, delay=3600)
    # Then ids increase and each job is where its options put it
    assert [a.id, b.id, c.id] == ["1", "2", "3"]
    assert (a.state(), b.state(), c.state()) == ("wait", "prioritized", "delayed")
    assert q.counts()["wait"] == 1 and q.counts()["prioritized"] == 1
    got = q.get_job(a.id)
    assert got is not None and got.data == {"to": "a"} and got.name == "send"
    assert got.timestamp_ms > 0 and got.attempts == 1


def test_custom_job_id_is_idempotent(redis_url: str) -> None:
    q = Queue("q", redis_url)
    first = q.add("x", {"v": 1}, job_id="order-42")
    again = q.add("x", {"v": 2}, job_id="order-42")
    assert first.id == again.id == "order-42"
    job = q.get_job("order-42")
    assert job is not None and job.data == {"v": 1}
    assert q.counts()["wait"] == 1


def test_claim_order_wait_fifo_then_lifo_then_priority(redis_url: str) -> None:
    q = Queue("q", redis_url)
    p5 = q.add("x", priority=5).id
    p1 = q.add("x", priority=1).id
    w1 = q.add("x").id
    w2 = q.add("x").id
    lifo = q.add("x", lifo=True).id
    p1b = q.add("x", priority=1).id
    order = [i for i, _t in claim(q, 10)]
    # no-priority jobs first (LIFO at the head), then priority 1 FIFO, then 5
    assert order == [lifo, w1, w2, p1, p1b, p5]


def test_hand_off_gives_an_added_job_to_a_registered_idle_worker(redis_url: str) -> None:
    q = Queue("h", redis_url)
    r = q.client
    # A short claim with idle_ms registers the worker; the next add is claimed
    # for it at once and put in its inbox (no marker wake, no claim call).
    assert q._driver.execute(q.core.script("claim", 1, "w1", 30_000, 5_000))[1:] == []
    assert r.zrange(q.core.keys.idle, 0, -1) == [b"30000|w1"]
    job = q.add("x", {"v": 1})
    assert job.state() == "active"
    rec = q.get_job(job.id)
    assert rec is not None and rec.worker == "w1"
    [member] = r.zrange(q.core.keys.worker_wake("w1"), 0, -1)
    job_id, token, _fields = orjson.loads(member)
    assert job_id == job.id and r.zrange(q.core.keys.idle, 0, -1) == []  # one job per registration
    assert 0 < r.pttl(q.core.keys.worker_wake("w1")) <= 30_000
    # The next add finds nobody idle: it waits and wakes the marker.
    assert q.add("x").state() == "wait"
    # A claim takes the inbox first (token checked), then the queue.
    got = claim(q, 2, "w1")
    assert got[0] == (job.id, token) and [i for i, _t in got] == [job.id, "2"]


def test_no_hand_off_when_paused_expired_or_work_is_waiting(redis_url: str) -> None:
    q = Queue("h2", redis_url)
    idle = q.core.keys.idle
    register = q.core.script("claim", 1, "w1", 30_000, 60_000)
    q._driver.execute(register)
    q.pause()
    assert q.add("x").state() == "wait"  # paused: nothing is handed off
    q.resume()
    assert q.client.zcard(idle) == 1  # the registration is still there
    assert q.add("x").state() == "wait"  # another job waits: keep FIFO order
    q.drain()
    q.client.zadd(idle, {"30000|w1": 1})  # a registration that expired long ago
    assert q.add("x").state() == "wait" and q.client.zcard(idle) == 0


def test_pause_stops_claims_and_resume_restores_them(redis_url: str) -> None:
    q = Queue("q", redis_url)
    q.add("x")
    q.pause()
    assert q.is_paused()
    assert claim(q) == []
    q.add("y")  # adds still land while paused
    q.resume()
    assert not q.is_paused()
    assert len(claim(q, 5)) == 2


def test_change_delay_promote_and_wrong_state_errors(redis_url: str) -> None:
    q = Queue("q", redis_url)
    job = q.add("x", delay=3600)
    job.change_delay(7200)
    assert job.state() == "delayed"
    job.promote()
    assert job.state() == "wait"
    with pytest.raises(JobStateError, match="it is wait"):
        job.promote()
    with pytest.raises(JobStateError):
        job.change_delay(5)


def test_due_delayed_job_is_promoted_by_claim(redis_url: str) -> None:
    q = Queue("q", redis_url)
    job = q.add("x", delay=0.05)
    assert claim(q) == []
    deadline_claims: list[tuple[str, str]] = []
    import time

    end = time.monotonic() + 5
    while not deadline_claims and time.monotonic() < end:
        deadline_claims = claim(q)
    assert deadline_claims and deadline_claims[0][0] == job.id


def test_change_priority_moves_a_waiting_job(redis_url: str) -> None:
    q = Queue("q", redis_url)
    a = q.add("x", priority=10)
    b = q.add("x", priority=5)
    a.change_priority(1)
    assert [i for i, _ in claim(q, 2)] == [a.id, b.id]
    c = q.add("x")
    c.change_priority(2)
    assert c.state() == "prioritized"


def test_remove_refuses_active_and_deletes_others(redis_url: str) -> None:
    q = Queue("q", redis_url)
    a, b = q.add("x"), q.add("x", delay=100)
    claim(q)
    with pytest.raises(JobStateError, match="it is active"):
        a.remove()
    b.remove()
    assert q.get_job(b.id) is None
    with pytest.raises(JobNotFound):
        b.remove()


def test_retry_clean_drain_promote_jobs_obliterate(redis_url: str) -> None:
    q = Queue("q", redis_url)
    jobs = [q.add("x", remove_on_fail=False) for _ in range(3)]
    for job_id, token in claim(q, 3):
        fail = q.core.script("fail", 1, job_id, token, "bad", "ValueError", "", -1, -1, -1, "")
        q._driver.execute(fail)
    assert q.counts()["failed"] == 3
    jobs[0].retry()  # BullMQ's default: the attempt counters are kept
    assert jobs[0].state() == "wait" and q.get_job(jobs[0].id).attempts_made == 1  # type: ignore[union-attr]
    assert q.retry_jobs("failed", reset_attempts_made=True) == 2
    assert q.get_job(jobs[1].id).attempts_made == 0  # type: ignore[union-attr]
    assert q.counts()["wait"] == 3
    # clean: nothing in wait is older than an hour; everything is older than 0 s
    assert q.clean(3600, 100, "wait") == []
    assert sorted(q.clean(0, 2, "wait")) != []
    q.add("d", delay=1000)
    q.add("d", delay=1000)
    assert q.promote_jobs() == 2
    assert q.drain() >= 2
    assert q.counts()["wait"] == 0
    q.add("d", delay=1000)
    assert q.drain(delayed=True) == 1
    claim(q)  # nothing left; now one active job blocks obliterate
    q.add("z")
    claim(q)
    from rqsup import ActiveJobsError

    with pytest.raises(ActiveJobsError):
        q.obliterate()
    q.obliterate(force=True)
    assert q.client.keys("rqsup:{q}:*") == []


def test_update_data_and_logs_and_get_jobs(redis_url: str) -> None:
    q = Queue("q", redis_url)
    job = q.add("x", {"a": 1})
    job.update_data({"a": 2})
    assert q.get_job(job.id).data == {"a": 2}  # type: ignore[union-attr]
    [(jid, tok)] = claim(q)
    n = q._driver.execute(q.core.script("log", jid, tok, 2, 1, "one", "two", "three"))
    assert n == 2 and job.logs() == ["two", "three"]
    q.add("y")
    q.add("z")
    assert [j.name for j in q.get_jobs("wait")] == ["z", "y"]
    assert [j.name for j in q.get_jobs("wait", asc=True)] == ["y", "z"]
    assert [j.id for j in q.get_jobs("active")] == [job.id]


def test_retention_count_and_remove_on_complete(redis_url: str) -> None:
    q = Queue("q", redis_url)
    for _ in range(5):
        q.add("x", remove_on_complete=2)
    gone = q.add("x", remove_on_complete=True)
    for job_id, token in claim(q, 6):
        q._driver.execute(q.core.script("complete", 1, 0, "w", 1000, job_id, token, "1",
                                        *( (0, -1) if job_id == gone.id else (2, -1))))
    assert q.counts()["completed"] == 2
    assert q.get_job(gone.id) is None


def test_bulk_add_in_chunks(redis_url: str) -> None:
    q = Queue("q", redis_url)
    jobs = q.add_bulk([{"name": "a", "data": i} for i in range(1200)] + [("b", {"x": 1})])
    assert len(jobs) == 1201 and len({j.id for j in jobs}) == 1201
    assert q.counts()["wait"] == 1201


def test_async_queue_mirrors_sync(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("aq", redis_url)
        job = await q.add("x", {"n": 1}, delay=50)
        assert await job.state() == "delayed"
        await job.promote()
        assert (await q.counts())["wait"] == 1
        bulk = await q.add_bulk([("y", 1), ("y", 2)])
        assert [j.id for j in bulk] == ["2", "3"]
        await q.pause()
        assert await q.is_paused()
        await q.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": -1}, "priority"),
        ({"priority": 2**21 + 1}, "priority"),
        ({"attempts": 0}, "attempts"),
        ({"delay": -1}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"backoff": {"type": "exponential", "delay": -1}}, "backoff delay"),
        ({"backoff": {"kind": "x"}}, "unknown keys"),
        ({"remove_on_complete": "yes"}, "remove_on_complete"),
        ({"job_id": "12"}, "digits"),
        ({"job_id": "a:b"}, "must not contain"),
        ({"timeout": 0}, "timeout"),
        ({"colour": "red"}, "unknown job option"),
    ],
)
def test_invalid_options_are_refused_before_anything_is_written(
    redis_url: str, options: dict[str, object], message: str
) -> None:
    q = Queue("q", redis_url)
    with pytest.raises(InvalidOption, match=message):
        q.add("x", {"a": 1}, **options)
    assert q.client.keys("*") == []


def test_unencodable_data_is_refused_with_a_clear_error(redis_url: str) -> None:
    q = Queue("q", redis_url)
    with pytest.raises(EncodeError, match="data of job 'x' cannot be encoded as JSON"):
        q.add("x", {"s": {1, 2}})
    with pytest.raises(EncodeError):
        q.add("x", {1: "int keys"})
    with pytest.raises(EncodeError, match="bulk job #1"):
        q.add_bulk([("ok", 1), ("bad", object())])
    assert q.client.keys("*") == []  # not even the first bulk job was written


def test_bad_names_and_unknown_ids(redis_url: str) -> None:
    with pytest.raises(ValueError, match="queue name"):
        Queue("a{b}", redis_url)
    q = Queue("q", redis_url)
    assert q.get_job("nope") is None
    with pytest.raises(InvalidOption, match="unknown state"):
        q.get_jobs("running")
    from rqsup.queue.job import Job

    ghost = Job("nope", {}, q)
    with pytest.raises(JobNotFound, match="job nope does not exist"):
        ghost.state()
    with pytest.raises(JobNotFound):
        ghost.promote()


def test_job_data_over_the_cap_is_refused_before_anything_is_written(redis_url: str) -> None:
    from rqsup import FlowProducer

    q = Queue("big", redis_url, max_data_bytes=1000)
    with pytest.raises(EncodeError, match=r"data of job 'x' is \d+ bytes of JSON, over the "
                                          r"limit of 1000 \(max_data_bytes\)"):
        q.add("x", "a" * 2000)
    with pytest.raises(EncodeError, match="max_data_bytes"):
        q.add_bulk([{"name": "x", "data": 1}, {"name": "x", "data": "b" * 2000}])
    job = q.add("x", "small")
    with pytest.raises(EncodeError, match="max_data_bytes"):
        job.update_data("c" * 2000)
    flows = FlowProducer(redis_url, max_data_bytes=1000)
    with pytest.raises(EncodeError, match="max_data_bytes"):
        flows.add({"name": "p", "queue": "big", "data": "d" * 2000})
    assert q.counts()["wait"] == 1  # only the small one
    with pytest.raises(InvalidOption, match="max_data_bytes"):
        Queue("big", redis_url, max_data_bytes=0)
    flows.close()
    q.close()

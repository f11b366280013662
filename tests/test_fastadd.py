"""Queue.add's fast path (no options): the same job, the same errors, and the
ordinary path whenever anything is unusual (rqsup.queue.fastadd)."""

from __future__ import annotations

import pytest
import redis

from rqsup import ClosedError, EncodeError, Queue
from rqsup.queue import fastadd
from rqsup.redis_server import RedisServer

pytestmark = pytest.mark.also_on_cluster  # on a Cluster the ordinary path runs


def test_a_fast_add_stores_and_returns_what_the_ordinary_path_does(redis_url: str) -> None:
    fast = Queue("fa", redis_url)
    slow = Queue("fb", redis_url)
    fast.add("warm")  # the first call loads the scripts (the ordinary path)
    a = fast.add("send", {"to": "x@y", "n": [1, 2]})
    b = slow.add("send", {"to": "x@y", "n": [1, 2]}, attempts=1)  # an option: ordinary path
    # A plain client took the fast path; a Cluster client never does.
    assert (fast._fast is not None) == fastadd.usable(fast, {})
    ra, rb = fast.get_job(a.id), slow.get_job(b.id)
    assert ra is not None and rb is not None
    strip = {"timestamp", "opts"}
    assert {k: v for k, v in a.raw.items() if k not in strip} == \
        {k: v for k, v in ra.raw.items() if k not in strip | {"processed_on"}}
    assert ra.data == rb.data and ra.name == rb.name and ra.raw["opts"] == rb.raw["opts"]
    assert a.added_event and a.add_outcome == "created"
    assert fast.counts()["wait"] == 2
    fast.close()
    slow.close()


def test_fast_adds_refuse_what_the_ordinary_path_refuses(redis_url: str) -> None:
    q = Queue("fr", redis_url, max_data_bytes=100)
    with pytest.raises(EncodeError, match="over the limit of 100"):
        q.add("big", "x" * 200)
    with pytest.raises(EncodeError, match="cannot be encoded as JSON"):
        q.add("bad", {1, 2})
    with pytest.raises(Exception, match="job name"):
        q.add("", 1)
    assert q.counts()["wait"] == 0
    q.close()
    with pytest.raises(ClosedError):
        q.add("late", 1)


def test_fast_adds_survive_noscript_and_a_redis_restart(private_redis: RedisServer) -> None:
    q = Queue("fn", private_redis.url)
    q.add("one")
    redis.Redis.from_url(private_redis.url).script_flush()
    q.add("two")  # NOSCRIPT: the ordinary path loads the scripts again
    private_redis.restart()  # the pooled connection is dead now
    q.add("three")
    assert q.counts()["wait"] == 3
    q.close()


def test_a_streamed_bulk_add_stores_every_job_in_order(redis_url: str) -> None:
    q = Queue("fbulk", redis_url)
    q.add("warm")
    n = 1_234  # three chunks of add.lua calls
    jobs = q.add_bulk([{"name": "x", "data": {"i": i}} for i in range(n)])
    assert [j.data["i"] for j in jobs] == list(range(n))
    ids = [int(j.id) for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == n  # auto ids in add order
    assert all(j.add_outcome == "created" and j.added_event for j in jobs)
    assert q.counts()["wait"] == n + 1
    # FIFO: the claim order is the add order
    reply = q._driver.execute(q.core.script("claim", 5, "w1", 30_000))
    assert [i.decode() for i, _t, _f in reply[1:]] == ["1"] + [j.id for j in jobs[:4]]
    with pytest.raises(EncodeError, match="bulk job #1000"):
        q.add_bulk([("x", i) for i in range(1000)] + [("x", {1, 2})])
    assert q.counts()["wait"] == n + 1 - 5  # one bad job: nothing of that batch written
    q.close()


@pytest.mark.single_only("a private redis-server whose scripts are flushed")
def test_a_streamed_bulk_add_survives_noscript(private_redis: RedisServer) -> None:
    q = Queue("fbn", private_redis.url)
    q.add("warm")
    redis.Redis.from_url(private_redis.url).script_flush()
    jobs = q.add_bulk([("x", i) for i in range(1_100)])  # NOSCRIPT: the ordinary path
    assert [j.data for j in jobs] == list(range(1_100))
    private_redis.restart()  # the pooled connection is dead: its chunks go the ordinary way
    jobs = q.add_bulk([("y", i) for i in range(1_100)])
    assert [j.data for j in jobs] == list(range(1_100))
    assert q.counts()["wait"] >= 2_201  # a lost reply may add a chunk twice (decisions.md)
    q.close()

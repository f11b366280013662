"""BullMQ's deduplication flags (issue 10): extend, replace, keep_last_if_active,
against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from rqsup import AsyncQueue, InvalidOption, Queue


def claim(q: Queue, n: int = 10) -> list[tuple[str, str]]:
    reply = q._driver.execute(q.core.script("claim", n, "w1", 30_000))
    return [(i.decode(), t.decode()) for i, t, _f in reply[1:]]


def complete(q: Queue, job_id: str, token: str) -> None:
    codes, _ = q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000, job_id, token,
                                               '"ok"', -1, -1))
    assert [int(c) for c in codes] == [0]


def test_extend_restarts_the_throttle_window(redis_url: str) -> None:
    q = Queue("dx", redis_url)
    first = q.add("x", 1, dedup={"id": "d", "ttl": 10, "extend": True})
    key = q.core.keys.dedup("d")
    q.client.pexpire(key, 200)  # as if most of the window had passed
    again = q.add("x", 2, dedup={"id": "d", "ttl": 10, "extend": True})
    assert again.deduplicated and again.id == first.id
    assert q.client.pttl(key) > 9000
    plain = q.add("x", 3, dedup={"id": "e", "ttl": 10})
    q.client.pexpire(q.core.keys.dedup("e"), 200)
    assert q.add("x", 4, dedup={"id": "e", "ttl": 10}).id == plain.id
    assert q.client.pttl(q.core.keys.dedup("e")) <= 200  # without extend: unchanged


def test_replace_swaps_a_pending_delayed_job_for_a_new_one(redis_url: str) -> None:
    q = Queue("dr", redis_url)
    old = q.add("x", {"v": 1}, delay=60, dedup={"id": "r", "replace": True})
    new = q.add("x", {"v": 2}, delay=60, dedup={"id": "r", "replace": True})
    assert new.add_outcome == "created" and new.id != old.id and new.data == {"v": 2}
    assert q.get_job(old.id) is None and q.get_dedup_job_id("r") == new.id
    assert q.counts()["delayed"] == 1
    # Once it has started, a replace add is deduplicated like any other.
    new.promote()
    [(jid, _tok)] = claim(q)
    third = q.add("x", {"v": 3}, delay=60, dedup={"id": "r", "replace": True})
    assert third.deduplicated and third.id == jid == new.id


def test_keep_last_if_active_runs_the_last_add_after_the_active_job(redis_url: str) -> None:
    q = Queue("dk", redis_url)
    opts = {"dedup": {"id": "k", "keep_last_if_active": True}}
    a = q.add("x", "a", **opts)
    # While a only waits, another add is deduplicated, and nothing is kept.
    assert q.add("x", "w", **opts).deduplicated
    [(jid, tok)] = claim(q)
    assert jid == a.id
    b = q.add("x", "b", **opts)
    c = q.add("x", "c", **opts)
    assert b.deduplicated and c.deduplicated and b.id == c.id == a.id
    assert q.counts()["wait"] == 0
    complete(q, jid, tok)
    [nxt] = q.get_jobs("wait")
    assert nxt.data == "c" and q.get_dedup_job_id("k") == nxt.id  # the last add wins
    assert q.client.exists(q.core.keys.dedup_next("k")) == 0
    names = [e[1][b"event"] for e in q.client.xrange(q.core.keys.events)]
    assert names.count(b"added") == 2


def test_dedup_flags_are_validated(redis_url: str) -> None:
    q = Queue("dv", redis_url)
    with pytest.raises(InvalidOption, match="extend applies to mode 'ttl'"):
        q.add("x", dedup={"id": "a", "extend": True})
    with pytest.raises(InvalidOption, match="keep_last_if_active applies to mode 'until_done'"):
        q.add("x", dedup={"id": "a", "ttl": 5, "keep_last_if_active": True})
    with pytest.raises(InvalidOption, match="use one"):
        q.add("x", delay=5, dedup={"id": "a", "mode": "debounce", "replace": True})
    with pytest.raises(InvalidOption, match="true or false"):
        q.add("x", dedup={"id": "a", "replace": "yes"})
    with pytest.raises(InvalidOption, match="unknown keys"):
        q.add("x", dedup={"id": "a", "extnd": True})
    assert q.counts()["wait"] == 0


def test_async_dedup_getters_and_removal(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("da", redis_url)
        job = await q.add("x", dedup="one")
        assert await q.get_dedup_job_id("one") == job.id
        assert await job.remove_dedup_key()
        assert await q.get_dedup_job_id("one") is None
        again = await q.add("x", dedup="one")
        assert again.add_outcome == "created"
        assert await q.remove_dedup_key("one")
        await q.close()

    asyncio.run(main())


def test_a_kept_add_yields_to_a_taken_custom_id_and_goes_with_removal(redis_url: str) -> None:
    q = Queue("dkx", redis_url)
    opts = {"dedup": {"id": "k", "keep_last_if_active": True}}
    a = q.add("x", "a", **opts)
    [(jid, tok)] = claim(q)
    q.add("x", "kept", job_id="Y", **opts)  # kept for after a
    taken = q.add("x", "own", job_id="Y")  # meanwhile a plain add takes the custom id
    assert taken.add_outcome == "created"
    complete(q, jid, tok)
    assert q.get_job("Y").data == "own"  # type: ignore[union-attr]  # not overwritten
    # remove_dedup_key takes a kept add along.
    b = q.add("x", "b", **opts)
    claim(q, 10)
    q.add("x", "c", **opts)
    assert q.client.exists(q.core.keys.dedup_next("k")) == 1
    assert q.remove_dedup_key("k")
    assert q.client.exists(q.core.keys.dedup_next("k")) == 0
    assert a.id != b.id


def test_a_deleted_holder_does_not_create_the_kept_add(redis_url: str) -> None:
    q = Queue("dkd", redis_url)
    opts = {"dedup": {"id": "k", "keep_last_if_active": True}}
    a = q.add("x", "a", **opts)
    [(jid, tok)] = claim(q)
    q.add("x", "b", **opts)  # kept
    q._driver.execute(q.core.script("move_back", jid, tok, 0))  # a back in wait
    assert q.drain() == 1  # a goes, and its kept add with it
    assert q.counts()["wait"] == 0 and q.client.exists(q.core.keys.dedup_next("k")) == 0
    assert a.id

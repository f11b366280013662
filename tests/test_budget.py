"""The Redis work budget of the hot paths, counted (never timed) on a private
redis-server with INFO commandstats: round trips per job and commands inside
each script, for add, claim and complete. A change that adds a command to a
hot script, or a round trip per job, fails here; a change that removes one
should lower the budget in the same commit (benchmarks/README.md, issue 14).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rqsup import Queue
from rqsup.redis_server import RedisServer
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import await_until

N = 200

#: Commands Redis runs per call, Lua's inner calls included (measured; the
#: budget is what the code reaches now, not a wish).
BUDGET = {
    "add, one job per call": 10,
    "claim, one job": 19,
    "complete, no claim": 15,
    "complete and claim the next": 31,
    "claim, per job of a batch of 10": 4.6,
    "complete, per job of a batch of 10 with retention": 7.4,
}
#: Round trips (EVALSHA calls) per job of an async worker at concurrency 1
#: over a full queue: the complete of one job carries the claim of the next.
WORKER_CALLS_PER_JOB = 1.1


@pytest.fixture
def counted(tmp_path: Any) -> Iterator[tuple[str, redis.Redis]]:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url)
    yield server.url, client
    client.close()
    server.cleanup()


def calls(client: redis.Redis) -> dict[str, int]:
    stats: Any = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def per_call(client: redis.Redis, run: Any, n: int) -> tuple[float, float]:
    """(EVALSHA calls, every other command) per unit of ``run``, INFO excluded."""
    client.config_resetstat()
    run()
    c = calls(client)
    evalsha = c.pop("evalsha", 0)
    c.pop("info", None)
    c.pop("config|resetstat", None)
    return evalsha / n, sum(c.values()) / n


def test_add_claim_and_complete_stay_within_their_command_budget(
        counted: tuple[str, redis.Redis]) -> None:
    url, client = counted
    q = Queue("budget", url)
    q.add("warm")  # scripts loaded, queue meta written
    rounds, inner = per_call(client, lambda: [q.add("x", i) for i in range(N)], N)
    assert rounds == 1.0
    assert inner <= BUDGET["add, one job per call"], inner

    def claim_one() -> list[tuple[str, str]]:
        out = []
        for _ in range(N):
            reply = q._driver.execute(q.core.script("claim", 1, "w1", 30_000))
            out += [(i.decode(), t.decode()) for i, t, _f in reply[1:]]
        return out
    got: list[tuple[str, str]] = []
    rounds, inner = per_call(client, lambda: got.extend(claim_one()), N)
    assert rounds == 1.0 and len(got) == N
    assert inner <= BUDGET["claim, one job"], inner

    def complete(pairs: list[tuple[str, str]], claim_n: int) -> None:
        for jid, tok in pairs:
            q._driver.execute(q.core.script("complete", 1, claim_n, "w1", 30_000, jid, tok,
                                            '"ok"', -1, -1, 5000))
    half = N // 2
    rounds, inner = per_call(client, lambda: complete(got[:half], 0), half)
    assert rounds == 1.0
    assert inner <= BUDGET["complete, no claim"], inner
    for i in range(half):
        q.add("y", i)
    rounds, inner = per_call(client, lambda: complete(got[half:], 1), N - half)
    assert rounds == 1.0
    assert inner <= BUDGET["complete and claim the next"], inner
    q.close()


def test_batches_share_their_commands(counted: tuple[str, redis.Redis]) -> None:
    """Under load a worker claims and completes many jobs per call: a claim
    activates its jobs with one INCRBY, ZADD and SADD, and completions that
    keep the same retention (the queue's default) trim once per call."""
    url, client = counted
    q = Queue("batch", url)
    q.add_bulk([("x", i) for i in range(N)])
    batches: list[list[tuple[str, str]]] = []

    def claim() -> None:
        for _ in range(N // 10):
            reply = q._driver.execute(q.core.script("claim", 10, "w1", 30_000))
            batches.append([(i.decode(), t.decode()) for i, t, _f in reply[1:]])
    rounds, inner = per_call(client, claim, N)
    assert rounds == pytest.approx(0.1) and sum(map(len, batches)) == N
    assert inner <= BUDGET["claim, per job of a batch of 10"], inner

    def complete(pairs: list[tuple[str, str]]) -> None:
        args: list[Any] = [len(pairs), 0, "w1", 30_000]
        for jid, tok in pairs:
            args += [jid, tok, '"ok"', 50, 86_400_000]  # keep 50: every batch trims
        q._driver.execute(q.core.script("complete", *args, 5000))
    for b in batches[:5]:  # 50 kept: from here on each batch drops 10
        complete(b)
    rest = batches[5:]
    rounds, inner = per_call(client, lambda: [complete(b) for b in rest], 10 * len(rest))
    assert rounds == pytest.approx(0.1)
    assert inner <= BUDGET["complete, per job of a batch of 10 with retention"], inner
    assert client.zcard(q.core.keys.completed) == 50
    q.close()


def test_a_worker_makes_one_round_trip_per_job(counted: tuple[str, redis.Redis]) -> None:
    url, client = counted
    q = Queue("trips", url)
    q.add_bulk([("x", i) for i in range(N)])

    async def proc(job: ActiveJob) -> Any:
        return job.data

    async def main() -> None:
        w = Worker("trips", proc, url=url, concurrency=1)
        task = asyncio.create_task(w.run())
        await await_until(lambda: q.counts()["completed"] >= N, f"{N} jobs completed", 60)
        await w.close(5)
        await task

    client.config_resetstat()
    asyncio.run(asyncio.wait_for(main(), 60))
    c = calls(client)
    # The probe's own counts() are plain reads (LLEN, ZCARD), not scripts.
    assert c["evalsha"] / N <= WORKER_CALLS_PER_JOB, c
    q.close()

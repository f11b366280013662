"""Schedulers (repeatable jobs): run-time computation, the Redis model, the
advancing loop (one pending run however many advance it), the config and the
supervisor end to end."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rqsup import AsyncQueue, InvalidOption, Queue
from rqsup.config.model import parse_config
from rqsup.errors import ConfigError
from rqsup.queue.connection import async_client
from rqsup.queue.schedule import Schedule
from rqsup.queue.schedulers import advance_to, op_advance_due
from rqsup.queue.scripts import Script
from rqsup.supervisor import ActiveJob, Worker
from rqsup.supervisor.schedules import SchedulerLoop, reload, upsert_configured
from tests.helpers import await_until, wait_until

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

NY = ZoneInfo("America/New_York")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def utc(ms_: int | None) -> str:
    assert ms_ is not None
    return datetime.fromtimestamp(ms_ / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def runs(schedule: Schedule, after: datetime, n: int) -> list[str]:
    out, at = [], ms(after)
    for _ in range(n):
        nxt = schedule.next_run(at)
        assert nxt is not None
        out.append(utc(nxt))
        at = nxt
    return out


# -- 1. run times: pure computation ------------------------------------------------


def test_cron_across_the_spring_forward_change() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT in New York: 02:30 does not exist.
    daily = Schedule.build(cron="30 2 * * *", tz="America/New_York")
    # The run that falls in the skipped hour happens at the jump (03:00 EDT =
    # 07:00Z), once; the day after it is 02:30 EDT again (Debian cron's rule).
    assert runs(daily, datetime(2026, 3, 7, 12, tzinfo=NY), 3) == [
        "2026-03-08 07:00:00", "2026-03-09 06:30:00", "2026-03-10 06:30:00"]
    # With a fixed seconds field (6 fields) the same rule applies.
    six = Schedule.build(cron="0 30 2 * * *", tz="America/New_York")
    assert runs(six, datetime(2026, 3, 7, 12, tzinfo=NY), 2) == [
        "2026-03-08 07:00:00", "2026-03-09 06:30:00"]
    # An hourly job follows real time: 01:00 EST, then 03:00 EDT, one hour later.
    hourly = Schedule.build(cron="0 * * * *", tz="America/New_York")
    assert runs(hourly, datetime(2026, 3, 8, 0, 30, tzinfo=NY), 3) == [
        "2026-03-08 06:00:00", "2026-03-08 07:00:00", "2026-03-08 08:00:00"]


def test_cron_across_the_fall_back_change() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:00-01:59 happens twice.
    repeated = Schedule.build(cron="30 1 * * *", tz="America/New_York")
    # A daily job in the repeated hour runs once (01:30 EDT = 05:30Z), not
    # again at 01:30 EST (06:30Z).
    assert runs(repeated, datetime(2026, 10, 31, 12, tzinfo=NY), 3) == [
        "2026-11-01 05:30:00", "2026-11-02 06:30:00", "2026-11-03 06:30:00"]
    six = Schedule.build(cron="15 30 1 * * *", tz="America/New_York")
    assert runs(six, datetime(2026, 10, 31, 12, tzinfo=NY), 2) == [
        "2026-11-01 05:30:15", "2026-11-02 06:30:15"]
    # '30 2 * * *' is not in the repeated hour: once, at 02:30 EST.
    daily = Schedule.build(cron="30 2 * * *", tz="America/New_York")
    assert runs(daily, datetime(2026, 10, 31, 12, tzinfo=NY), 2) == [
        "2026-11-01 07:30:00", "2026-11-02 07:30:00"]
    # Asked from inside the second pass of the hour (01:45 EST), the next
    # 01:45 is tomorrow's, not today's first pass (already in the past).
    late = Schedule.build(cron="45 1 * * *", tz="America/New_York")
    second_pass = datetime(2026, 11, 1, 1, 50, fold=1, tzinfo=NY)
    assert runs(late, second_pass, 1) == ["2026-11-02 06:45:00"]
    # An hourly job runs in both passes of the repeated hour (real time).
    hourly = Schedule.build(cron="0 * * * *", tz="America/New_York")
    assert runs(hourly, datetime(2026, 11, 1, 0, 30, tzinfo=NY), 3) == [
        "2026-11-01 05:00:00", "2026-11-01 06:00:00", "2026-11-01 07:00:00"]


def test_cron_seconds_field_and_utc_default() -> None:
    s = Schedule.build(cron="*/15 * * * * *")
    assert runs(s, datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC), 3) == [
        "2026-01-01 00:00:15", "2026-01-01 00:00:30", "2026-01-01 00:00:45"]
    # next_run is strictly after its argument.
    at = ms(datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC))
    assert s.next_run(at) == at + 15_000
    assert s.next_run(at - 1) == at


def test_every_grid_start_end_and_first_run() -> None:
    t0 = ms(datetime(2026, 1, 1, 10, 7, tzinfo=UTC))
    s = Schedule.build(every="15m")
    assert s.every_ms == 900_000
    assert s.first_run(t0) == t0  # runs at once, like BullMQ
    assert utc(s.next_run(t0)) == "2026-01-01 10:15:00"  # then on the clock's grid
    start = t0 + 60_000
    s2 = Schedule.build(every=timedelta(minutes=15), start=start, end=start + 1_800_000)
    assert s2.first_run(t0) == start
    assert s2.next_run(t0) == start
    assert s2.next_run(start) == start + 900_000  # the grid starts at `start`
    assert s2.next_run(start + 1_800_000) is None  # past the end
    cron = Schedule.build(cron="0 * * * *", start=datetime(2026, 1, 2), end=datetime(2026, 1, 2, 3))
    assert utc(cron.first_run(t0)) == "2026-01-02 00:00:00"  # a match at start counts
    assert cron.next_run(ms(datetime(2026, 1, 2, 3, tzinfo=UTC))) is None


def test_schedule_validation_names_the_problem() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"cron": "61 * * * *"}, "is invalid"),
        ({"cron": "* * * *"}, "5 fields"),
        ({"every": "5x"}, "every must be a duration"),
        ({"every": 0.01}, "at least 100ms"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"every": 5, "tz": "UTC"}, "tz applies to cron"),
        ({"every": 5, "limit": 0}, "limit must be an int >= 1"),
        ({"every": 5, "start": 10, "end": 5}, "end must be after start"),
        ({"every": 5, "start": "yesterday"}, "ISO 8601"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InvalidOption, match=message):
            Schedule.build(**kwargs)
    # Naive datetimes are read in the scheduler's time zone.
    s = Schedule.build(cron="0 9 * * *", tz="America/New_York", start=datetime(2026, 7, 1))
    assert utc(s.start_ms) == "2026-07-01 04:00:00"


def test_advance_skips_runs_missed_while_the_pending_run_waited() -> None:
    spec = '{"every_ms": 1000}'
    # Started on time: the next grid point.
    assert advance_to(spec, 10_000, "10003", 10_500) == 11_000
    # Started three hours late (downtime, backlog): the next grid point after
    # its start; the ~10,800 runs in between are skipped, not replayed.
    assert advance_to(spec, 10_000, str(10_000 + 3 * 3_600_000 + 400), 10_000 + 3 * 3_600_000
                      + 500) == 10_000 + 3 * 3_600_000 + 1000
    # The job is gone (deleted by hand, retention): counted from now.
    assert advance_to(spec, 10_000, "", 25_300) == 26_000
    # Advanced late although the run started on time (a supervisor was down):
    # the next run is already due, it is added once, ready at once.
    assert advance_to(spec, 10_000, "10003", 14_200) == 11_000


# -- 2. the Redis model ------------------------------------------------------------


def pending(q: Queue, sid: str) -> list[str]:
    """Runs of ``sid`` not started yet, read atomically (one script)."""
    k = q.core.keys
    script = """
    local out = {}
    local function scan(ids)
      for _, id in ipairs(ids) do
        if string.sub(id, 1, #ARGV[1]) == ARGV[1]
            and not redis.call('HGET', KEYS[4] .. id, 'processed_on') then
          out[#out + 1] = id
        end
      end
    end
    scan(redis.call('ZRANGE', KEYS[1], 0, -1))
    scan(redis.call('LRANGE', KEYS[2], 0, -1))
    scan(redis.call('ZRANGE', KEYS[3], 0, -1))
    return out
    """
    ids = q.client.eval(script, 4, k.delayed, k.wait, k.prioritized, k.job_prefix,
                        f"sched:{sid}:")
    return sorted(i.decode() for i in ids)


def run_ms(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


def test_upsert_get_list_remove(redis_url: str) -> None:
    q = Queue("sq", redis_url)
    info = q.upsert_scheduler("report", every="1h",
                              template={"name": "render", "data": {"kind": "hourly"},
                                        "options": {"attempts": 3, "priority": 2}})
    assert info.every_s == 3600 and info.cron is None and info.count == 1 and info.done is None
    assert info.name == "render" and info.data == {"kind": "hourly"}
    assert info.options == {"attempts": 3, "priority": 2}
    # every runs at once: the first run is ready now, a normal job.
    assert info.job_id is not None and info.job_id == f"sched:report:{info.next_run_ms}"
    job = q.get_job(info.job_id)
    assert job is not None and job.name == "render" and job.data == {"kind": "hourly"}
    assert job.attempts == 3 and job.state() == "prioritized" and job.raw["scheduler"] == "report"
    assert pending(q, "report") == [info.job_id]

    # An unchanged upsert (a supervisor restarting) changes nothing.
    again = q.upsert_scheduler("report", every="1h",
                               template={"name": "render", "data": {"kind": "hourly"},
                                         "options": {"attempts": 3, "priority": 2}})
    assert again == info

    # A cron one, in a time zone: its first run is delayed until the match.
    daily = q.upsert_scheduler("daily", cron="0 3 * * *", tz="Europe/Riga")
    assert daily.name == "daily"  # the id when the template has no name
    assert daily.next_run is not None
    assert daily.next_run.astimezone(ZoneInfo("Europe/Riga")).hour == 3
    assert q.get_job(daily.job_id or "").state() == "delayed"  # type: ignore[union-attr]
    assert [s.id for s in q.list_schedulers()] == ["report", "daily"]

    # A new definition replaces the pending run of the old one.
    changed = q.upsert_scheduler("daily", cron="0 4 * * *", tz="Europe/Riga")
    assert changed.job_id != daily.job_id and q.get_job(daily.job_id or "") is None
    assert pending(q, "daily") == [changed.job_id]
    assert changed.count == 2 and changed.updated_ms >= daily.updated_ms

    assert q.remove_scheduler("daily") is True
    assert q.get_scheduler("daily") is None and pending(q, "daily") == []
    assert q.remove_scheduler("daily") is False
    assert [s.id for s in q.list_schedulers()] == ["report"]
    for refused in ({"job_id": "a"}, {"delay": 5}, {"dedup": "d"}):
        with pytest.raises(InvalidOption, match=next(iter(refused))):
            q.upsert_scheduler("x", every=5, template={"options": refused})
    with pytest.raises(InvalidOption, match="scheduler id"):
        q.upsert_scheduler("a:b", every=5)
    with pytest.raises(InvalidOption, match="unknown keys"):
        q.upsert_scheduler("x", every=5, template={"nmae": "typo"})
    # Obliterate deletes the schedulers with the queue.
    q.obliterate(force=True)
    assert q.list_schedulers() == [] and q.get_scheduler("report") is None
    assert q.client.keys("*sq*") == []
    q.close()


def test_async_queue_has_the_same_api(redis_url: str) -> None:
    async def go() -> None:
        q = AsyncQueue("asq", redis_url)
        info = await q.upsert_scheduler("s", cron="*/5 * * * *", limit=2)
        assert info.limit == 2 and (await q.get_scheduler("s")) == info
        assert [s.id for s in await q.list_schedulers()] == ["s"]
        assert await q.remove_scheduler("s") is True
        await q.close()

    asyncio.run(go())


def test_scheduler_job_has_the_fields_add_writes(redis_url: str) -> None:
    # includes/scheduler.lua creates jobs itself: keep it in step with add.lua.
    q = Queue("fields", redis_url)
    added = q.add("x", {"a": 1}, delay=60)
    info = q.upsert_scheduler("s", cron="0 0 1 1 *", template={"name": "x", "data": {"a": 1}})
    plain = set(q.client.hkeys(q.core.keys.job(added.id)))
    sched = set(q.client.hkeys(q.core.keys.job(info.job_id or "")))
    assert sched - plain == {b"scheduler"}
    assert plain - sched <= {b"dedup_id"}
    q.close()


# -- 3. advancing: one pending run, however many advance ---------------------------


def claim(q: Queue, n: int = 10) -> list[str]:
    reply = q._driver.execute(q.core.script("claim", n, "tester", 30_000))
    return [i.decode() for i, _t, _f in reply[1:]]


def test_three_concurrent_advancers_add_each_run_once(redis_url: str) -> None:
    q = Queue("race", redis_url)
    q.upsert_scheduler("tick", every=0.1)
    stop = threading.Event()
    added: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def advancer() -> None:
        mine = Queue("race", redis_url)
        try:
            while not stop.is_set():
                report = mine._driver.drive(op_advance_due(mine.core))
                with lock:
                    added.extend(report.added)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=advancer) for _ in range(3)]
    for t in threads:
        t.start()
    claimed: list[str] = []
    most = 0
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            now_pending = pending(q, "tick")
            most = max(most, len(now_pending))
            claimed.extend(claim(q))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert most == 1, f"{most} runs were pending at once"
    # The last claim may not have been advanced yet: one more pass settles it.
    added.extend(q._driver.drive(op_advance_due(q.core)).added)
    assert len(pending(q, "tick")) == 1
    # Every run was added once, on the 100 ms grid, in order.
    assert len(added) == len(set(added)) and len(added) >= 10, added
    times = [run_ms(i) for i in added]
    assert times == sorted(times) and all(t % 100 == 0 for t in times)
    info = q.get_scheduler("tick")
    assert info is not None and info.count == len(added) + 1
    assert len(claimed) == len(set(claimed))
    # The run that came due last is recorded (the dashboard shows it).
    assert info.last_run_ms is not None and info.last_job_id == added[-2]
    assert info.next_run_ms is not None and info.last_run_ms < info.next_run_ms
    q.close()


def test_scheduler_next_is_a_compare_and_set(redis_url: str) -> None:
    q = Queue("cas", redis_url)
    info = q.upsert_scheduler("s", every="1h")
    keys = (*q.core.key_list, *q.core.keys.scheduler_keys())
    rev = q.client.hget(q.core.keys.scheduler("s"), "rev").decode()
    nxt = str(info.next_run_ms)

    def advance(run: int) -> list[Any]:
        reply = q._driver.execute(Script("scheduler_next", keys, ("s", rev, nxt, run, "")))
        return [int(reply[0]), reply[1].decode()]

    # The pending run has not started: nothing to advance.
    assert advance(run_ms(info.job_id or "") + 3_600_000)[0] == -4
    claim(q)
    first = advance(run_ms(info.job_id or "") + 3_600_000)
    assert first[0] == 0
    # The same advance again (another supervisor, a resend): stale.
    assert advance(run_ms(info.job_id or "") + 3_600_000)[0] == -6
    assert len(pending(q, "s")) == 1
    q.close()


@contextlib.asynccontextmanager
async def running(url: str, queue: str, seen: list[tuple[str, float]], *, loops: int = 1
                  ) -> AsyncIterator[list[SchedulerLoop]]:
    """A worker of ``queue`` recording (job id, start time) and ``loops`` advancing loops."""

    async def proc(job: ActiveJob) -> Any:
        seen.append((job.id, time.time()))
        return None

    worker = Worker(queue, proc, url=url, concurrency=4, block_timeout_s=1.0)
    clients = [async_client(url) for _ in range(loops)]
    sched_loops = [SchedulerLoop(c, [queue]) for c in clients]
    tasks = [asyncio.create_task(worker.run()), *(asyncio.create_task(s.run())
                                                  for s in sched_loops)]
    try:
        yield sched_loops
    finally:
        # As a supervisor stops: workers first, the loops go on meanwhile (a
        # run claimed at the last moment is advanced).
        await worker.close(5)
        for s in sched_loops:
            await s.tick()
        for t in tasks[1:]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()


def test_every_runs_are_spaced_as_configured(redis_url: str) -> None:
    seen: list[tuple[str, float]] = []

    async def go() -> None:
        q = AsyncQueue("every", redis_url)
        # Upserted first, as a supervisor does with its config: the loops'
        # first pass sees it (one created later waits for their next pass).
        await q.upsert_scheduler("beat", every="1s", template={"data": {"v": 1}})
        async with running(redis_url, "every", seen, loops=2):
            await await_until(lambda: len(seen) >= 5, "5 runs", timeout=15)
        await q.close()

    asyncio.run(go())
    ids = [i for i, _t in seen]
    assert len(ids) == len(set(ids)), ids
    # After the first (immediate) run, runs sit on the 1 s grid, one per second.
    grid = [run_ms(i) for i in ids[1:5]]
    assert all(t % 1000 == 0 for t in grid), grid
    assert [b - a for a, b in itertools.pairwise(grid)] == [1000, 1000, 1000], grid
    started = [t for _i, t in seen[1:5]]
    for planned, actual in zip(grid, started, strict=True):
        assert -0.05 < actual - planned / 1000 < 0.5, (planned, actual)


def test_limit_and_end_are_respected(redis_url: str) -> None:
    seen: list[tuple[str, float]] = []
    q = Queue("lim", redis_url)

    async def go() -> None:
        async with running(redis_url, "lim", seen):
            q.upsert_scheduler("three", every="100ms", limit=3)
            now = int(time.time() * 1000)
            q.upsert_scheduler("short", every="100ms", end=now + 450)
            await await_until(lambda: (q.get_scheduler("three").done  # type: ignore[union-attr]
                                       and q.get_scheduler("short").done),  # type: ignore[union-attr]
                              "both schedulers done", timeout=10)
            await asyncio.sleep(0.5)  # nothing more comes

    asyncio.run(go())
    three = q.get_scheduler("three")
    short = q.get_scheduler("short")
    assert three is not None and three.done == "limit" and three.count == 3
    assert three.next_run_ms is None and three.job_id is None
    assert len([i for i, _t in seen if i.startswith("sched:three:")]) == 3
    assert short is not None and short.done == "end" and short.end_ms is not None
    short_runs = [run_ms(i) for i, _t in seen if i.startswith("sched:short:")]
    # At most one run per 100 ms up to the end (how many came before it
    # depends on the machine's load; "three" shows the repetition).
    assert 1 <= len(short_runs) <= 6 and max(short_runs) <= short.end_ms
    assert {s.id for s in q.list_schedulers()} == {"three", "short"}
    assert pending(q, "three") == [] and pending(q, "short") == []
    # Upserting a done scheduler unchanged keeps it done (config restarts).
    again = q.upsert_scheduler("three", every="100ms", limit=3)
    assert again.done == "limit" and again.count == 3
    q.close()


def test_missed_runs_are_not_replayed_after_downtime(redis_url: str) -> None:
    q = Queue("missed", redis_url)
    info = q.upsert_scheduler("m", every="200ms")
    first = info.job_id
    # Nothing runs for 1.5 s: about seven runs are missed.
    time.sleep(1.5)
    assert pending(q, "m") == [first]  # still only the one pending run
    seen: list[tuple[str, float]] = []
    back = time.time()

    async def go() -> None:
        async with running(redis_url, "missed", seen):
            await await_until(lambda: len(seen) >= 3, "3 runs after the restart", timeout=10)

    asyncio.run(go())
    ids = [i for i, _t in seen]
    # The overdue pending run runs once (the one catch-up); the next is on the
    # grid after it started, not one of the missed ones.
    assert ids[0] == first
    assert run_ms(ids[1]) > back * 1000 - 50
    assert len(ids) == len(set(ids))
    gaps = [run_ms(b) - run_ms(a) for a, b in itertools.pairwise(ids[1:])]
    assert all(g == 200 for g in gaps), gaps
    q.close()


def test_a_restarted_advancer_carries_on_and_a_gone_run_is_replaced(redis_url: str) -> None:
    q = Queue("restart", redis_url)
    seen: list[tuple[str, float]] = []

    async def phase(n: int) -> None:
        async with running(redis_url, "restart", seen, loops=3):
            await await_until(lambda: len(seen) >= n, f"{n} runs", timeout=10)

    q.upsert_scheduler("r", every="200ms")
    asyncio.run(phase(3))
    # Stopped (the "supervisors" are gone): one pending run survives.
    assert len(pending(q, "r")) == 1
    # Someone drains the queue meanwhile: the pending run is gone.
    assert q.drain(delayed=True) >= 1 and pending(q, "r") == []
    asyncio.run(phase(len(seen) + 3))  # fresh loops, fresh clients: it goes on
    ids = [i for i, _t in seen]
    assert len(ids) == len(set(ids)) and len(pending(q, "r")) == 1
    assert all(i.startswith("sched:r:") for i in ids)
    q.close()


def test_upsert_configured_twice_keeps_the_pending_run(redis_url: str) -> None:
    cfg = parse_config({
        "supervisor": {"name": "s1"},
        "queues": [{"name": "cq", "processor": "m:f"}],
        "schedulers": [{"id": "nightly", "queue": "cq", "cron": "30 2 * * *",
                        "tz": "America/New_York", "data": {"k": 1},
                        "options": {"timeout": "5m", "attempts": 2}}],
    }, Path("inline.toml"))

    async def go() -> None:
        client = async_client(redis_url)
        await upsert_configured(client, "rqsup", cfg.schedulers)
        await upsert_configured(client, "rqsup", cfg.schedulers)  # a restart
        await client.aclose()

    asyncio.run(go())
    q = Queue("cq", redis_url)
    info = q.get_scheduler("nightly")
    assert info is not None and info.count == 1 and info.tz == "America/New_York"
    assert info.options == {"timeout": 300.0, "attempts": 2}
    assert len(pending(q, "nightly")) == 1
    job = q.get_job(info.job_id or "")
    assert job is not None and job.name == "nightly" and job.data == {"k": 1}

    # SIGHUP with a changed table and a scheduler for another queue.
    raw = {"supervisor": {"name": "s1"}, "queues": [{"name": "cq", "processor": "m:f"}],
           "schedulers": [{"id": "nightly", "queue": "cq", "cron": "30 2 * * *",
                           "tz": "America/New_York", "data": {"k": 2}},
                          {"id": "other", "queue": "elsewhere", "every": "1h"}]}
    cfg2 = parse_config(raw, Path("inline.toml"))

    async def hup() -> list[str]:
        client = async_client(redis_url)
        loop = SchedulerLoop(client, ["cq"])
        await reload(loop, client, cfg2)
        await client.aclose()
        return list(loop.cores)

    assert asyncio.run(hup()) == ["cq", "elsewhere"]
    again = q.get_scheduler("nightly")
    assert again is not None and again.data == {"k": 2} and again.updated_ms >= info.updated_ms
    # The same run time, so the same id: the old run was replaced by the new one.
    assert pending(q, "nightly") == [again.job_id]
    job = q.get_job(again.job_id or "")
    assert job is not None and job.data == {"k": 2}
    assert Queue("elsewhere", redis_url).get_scheduler("other") is not None
    q.close()


# -- 4. config ------------------------------------------------------------------------


def config(**top: Any) -> dict[str, Any]:
    return {"supervisor": {"name": "s"}, "queues": [{"name": "q", "processor": "m:f"}], **top}


def test_config_schedulers_are_validated_with_file_and_key() -> None:
    good = parse_config(config(schedulers=[
        {"id": "a", "queue": "q", "every": "15m", "limit": 4, "name": "job-a",
         "start": datetime(2026, 1, 1, 8, 0), "end": 1_900_000_000_000,
         "options": {"priority": 3, "backoff": {"type": "fixed", "delay": "5s"}}},
        {"id": "a", "queue": "other", "cron": "0 0 * * * *", "tz": "Europe/Riga"},
    ]), Path("c.toml"))
    a, b = good.schedulers
    assert a.every_s == 900 and a.limit == 4 and a.start_ms == ms(datetime(2026, 1, 1, 8,
                                                                           tzinfo=UTC))
    assert a.options == {"priority": 3, "backoff": {"type": "fixed", "delay": 5.0}}
    assert b.queue == "other" and b.cron == "0 0 * * * *"  # any queue name may be scheduled
    assert parse_config(config(), Path("c.toml")).schedulers == ()

    with pytest.raises(ConfigError) as err:
        parse_config(config(schedulers=[
            {"id": "a", "queue": "q"},
            {"id": "b", "queue": "q", "cron": "* * *", "tz": "Nowhere/City"},
            {"id": "c", "queue": "q", "every": "5x", "options": {"delay": 5, "atempts": 2}},
            {"id": "d", "queue": "q", "every": "1m", "tz": "UTC"},
            {"id": "d", "queue": "q", "every": "1m", "data": {"when": datetime(2026, 1, 1)}},
            {"queue": "q", "every": "1m", "limit": 0},
        ]), Path("c.toml"))
    text = "\n".join(err.value.problems)
    for expected in (
        "c.toml: schedulers[0]: needs exactly one of cron",
        "c.toml: schedulers[1].cron: cron '* * *' must have 5 fields",
        "c.toml: schedulers[1].tz: is not a known IANA time zone",
        "c.toml: schedulers[2].every: must be",
        "c.toml: schedulers[2].options.delay: run times are chosen by the scheduler",
        'c.toml: schedulers[2].options.atempts: unknown key (did you mean "attempts"?)',
        "c.toml: schedulers[3]: tz applies to cron schedules only",
        "c.toml: schedulers[4].data: must be JSON data",
        'c.toml: schedulers[4].id: duplicate scheduler "d" for queue "q"',
        "c.toml: schedulers[5].id: is required",
        "c.toml: schedulers[5].limit: must be an integer >= 1",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    with pytest.raises(ConfigError, match=r"write \[\[schedulers\]\]"):
        parse_config(config(schedulers={"id": "a"}), Path("c.toml"))


def test_rqsup_check_reports_each_scheduler() -> None:
    from rqsup.cli.check import WARN, check_schedulers

    cfg = parse_config(config(schedulers=[
        {"id": "a", "queue": "q", "cron": "0 3 * * *", "tz": "Europe/Riga"},
        {"id": "b", "queue": "elsewhere", "every": "15m"},
        {"id": "c", "queue": "q", "every": "1m", "end": 1000},
    ]), Path("c.toml"))
    a, b, c = check_schedulers(cfg)
    assert a.passed and "queue q, cron '0 3 * * *' (Europe/Riga), first run" in a.detail
    assert b.status == WARN and "not served by this config" in b.detail and "every 15m" in b.detail
    assert "no run (past its end)" in c.detail


def test_prod_config_example_scheduler_is_valid() -> None:
    import tomllib

    raw = tomllib.loads((Path(__file__).parents[1] / "configs/prod.toml").read_text())
    block = []
    in_example = False
    for line in (Path(__file__).parents[1] / "configs/prod.toml").read_text().splitlines():
        if line.strip() == "# [[schedulers]]":
            in_example = True
        if in_example:
            if not line.startswith("#"):
                break
            block.append(line[2:] if line.startswith("# ") else line[1:])
    assert block, "configs/prod.toml has a commented [[schedulers]] example"
    example = tomllib.loads("\n".join(block))
    raw["schedulers"] = example["schedulers"]
    raw["redis"].pop("ssl_ca_certs", None)
    cfg = parse_config(raw, Path("prod.toml"))
    assert cfg.schedulers and cfg.schedulers[0].queue in {q.name for q in cfg.queues}


# -- 5. supervisors end to end ---------------------------------------------------------


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[Any]:
    from tests.procs import Supervisor

    started: list[Supervisor] = []

    def go(cfg: Path) -> Supervisor:
        sup = Supervisor(cfg, tmp_path / "supervisor.log")
        started.append(sup)
        return sup

    yield go
    for sup in started:
        sup.kill()


def test_two_supervisors_and_a_restart_keep_one_pending_run(tmp_path: Path, redis_url: str,
                                                              supervisors: Any) -> None:
    import signal

    from tests.procs import PROCS, config_text, started_ids, uid

    qname = f"sched-{uid()}"
    startlog = tmp_path / "starts"
    sched = (f'\n[[schedulers]]\nid = "beat"\nqueue = "{qname}"\nevery = "500ms"\n'
             f'data = {{ startlog = "{startlog}" }}\n')
    cfgs = []
    for n in (1, 2):
        text = config_text(redis_url, f"sup{n}-{uid()}",
                           [{"name": qname, "processor": f"{PROCS}:work", "mode": "thread",
                             "concurrency": 2}])
        cfgs.append(tmp_path / f"s{n}.toml")
        cfgs[-1].write_text(text + sched)
    q = Queue(qname, redis_url)
    most = 0

    def watch(n: int, what: str) -> None:
        def enough() -> bool:
            nonlocal most
            most = max(most, len(pending(q, "beat")))
            return len(started_ids(startlog)) >= n
        wait_until(enough, what, 20)

    a, b = supervisors(cfgs[0]), supervisors(cfgs[1])
    watch(6, "6 runs with two supervisors")
    a.signal(signal.SIGKILL)
    a.wait_exit(5)
    watch(len(started_ids(startlog)) + 2, "2 more runs with one supervisor")
    a2 = supervisors(cfgs[0])  # restart: upserts the unchanged scheduler again
    a2.wait_log("scheduler beat of queue")
    watch(len(started_ids(startlog)) + 4, "4 more runs after the restart")
    for sup in (a2, b):
        sup.signal(signal.SIGTERM)
    for sup in (a2, b):
        assert sup.wait_exit(20) == 0
    # A run the SIGKILL interrupted is run again after the restart (at least
    # once delivery); otherwise every run is a new grid point, in order.
    ids = list(dict.fromkeys(started_ids(startlog)))
    assert most == 1, f"{most} runs were pending at once"
    times = [run_ms(i) for i in ids[1:]]
    assert times == sorted(times) and all(t % 500 == 0 for t in times), times
    # What survives the supervisors: the pending run, or (claimed just before
    # the stop, given back unfinished) the run the next start advances from.
    info = q.get_scheduler("beat")
    assert info is not None and info.count >= len(ids)
    left = pending(q, "beat")
    last = q.get_job(info.job_id or "")
    assert left == [info.job_id] or (left == [] and last is not None and last.processed_on_ms)
    q.close()


def test_immediately_and_count_as_in_bullmq(redis_url: str) -> None:
    q = Queue("sqi", redis_url)
    daily = q.upsert_scheduler("daily", cron="0 3 * * *", immediately=True)
    job = q.get_job(daily.job_id or "")
    assert job is not None and job.state() == "wait"  # now, not at the next 03:00
    plain = q.upsert_scheduler("plain", cron="0 3 * * *")
    assert q.get_job(plain.job_id or "").state() == "delayed"  # type: ignore[union-attr]
    # count: runs already made, against limit (the first run here is the 3rd of 3).
    last = q.upsert_scheduler("three", every="1h", limit=3, count=2)
    assert last.count == 3 and last.job_id is not None
    done = q.upsert_scheduler("spent", every="1h", limit=3, count=3)
    assert done.job_id is None and done.done == "limit"
    # An unchanged upsert keeps the count it reached.
    assert q.upsert_scheduler("three", every="1h", limit=3, count=2).count == 3
    with pytest.raises(InvalidOption, match="count must be"):
        q.upsert_scheduler("bad", every="1h", count=-1)
    with pytest.raises(InvalidOption, match="immediately"):
        q.upsert_scheduler("bad", every="1h", immediately="yes")  # type: ignore[arg-type]
    assert q.get_schedulers_count() == 4
    q.close()

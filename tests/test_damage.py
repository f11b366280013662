"""Bad state in Redis never costs another job (issue 8).

Given a running supervisor (a process-mode and a thread-mode queue) with good
jobs all around, when job hashes are damaged in every way a hand edit, a
buggy writer or another version could damage them (every integer field not a
number, every JSON field invalid, an option of the wrong type, the name
missing, the key of the wrong type, an id with no hash) in every state (wait,
prioritized, delayed, active, waiting-children, and active under the live
supervisor itself), then every good job completes, every bad one is failed
(MalformedJob, its reason naming the field) or set aside in the queue's
malformed set (with the reason), no queue stops, nothing is left active, and
the supervisor never logs a crashed task.

Scripts check what they use: a key's type everywhere, and the counter a
script adds to (attempts_started at a claim, attempts_made at a completion
or failure), plus the name at a claim; the worker checks the rest of the
hash when it starts a job. So damage to a job that is already running counts
when it touches what its end uses (the key, attempts_made): the "live" case
plants those; damage to other fields of a running job is found when it next
starts (which the planted states cover).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from rqsup import FlowProducer, Queue
from rqsup.queue.connection import sync_client
from tests.helpers import wait_until
from tests.procs import PROCS, config_text, started_ids, uid, write

INT_FIELDS = ("timestamp", "delay", "priority", "attempts", "attempts_made", "attempts_started",
              "stalled_count", "processed_on", "finished_on")

#: name -> (expected outcome, text its reason contains)
DAMAGE: dict[str, tuple[str, str]] = {
    **{f"int-{f}": ("failed", f"field '{f}' is not an integer") for f in INT_FIELDS},
    "json-data": ("failed", "field 'data' is not valid JSON"),
    "json-opts": ("failed", "field 'opts' is not valid JSON"),
    "opt-type": ("failed", "option 'timeout_ms' has a bad value"),
    "no-name": ("failed", "field 'name' is missing"),
    "wrong-type": ("malformed", "holds a string, not a job hash"),
    "no-hash": ("malformed", "no job hash exists"),
}
#: Damage the end of a running job sees (see the module docstring).
LIVE_DAMAGE = ["int-attempts_made", "wrong-type", "no-hash"]
STATES = ("wait", "prioritized", "delayed", "active", "waiting-children")


def damage(r: redis.Redis, key: str, kind: str) -> None:
    if kind.startswith("int-"):
        r.hset(key, kind[4:], "x")
    elif kind == "json-data":
        r.hset(key, "data", "{not json")
    elif kind == "json-opts":
        r.hset(key, "opts", "[1,")
    elif kind == "opt-type":
        r.hset(key, "opts", '{"timeout_ms": "soon"}')
    elif kind == "no-name":
        r.hdel(key, "name")
    elif kind == "wrong-type":
        r.delete(key)
        r.set(key, "junk")
    elif kind == "no-hash":
        r.delete(key)
    else:
        raise AssertionError(kind)


def plant(q: Queue, flows: FlowProducer, r: redis.Redis, state: str, kind: str) -> str:
    """A job in ``state``, then damaged; returns its id."""
    jid = f"bad-{state}-{kind}"
    keys = q.core.keys
    if state == "waiting-children":
        flows.add({"name": "parent", "queue": q.name, "data": {}, "opts": {"job_id": jid},
                   "children": [{"name": "child", "queue": q.name, "data": {"n": 1}}]})
    elif state == "delayed":
        q.add("bad", {"n": 1}, job_id=jid, delay=1.5)
    elif state == "prioritized":
        q.add("bad", {"n": 1}, job_id=jid, priority=3)
    else:
        q.add("bad", {"n": 1}, job_id=jid)
    if state == "active":
        # Held by a worker that died: its lease runs out soon after the start.
        r.lrem(keys.wait, 0, jid)
        r.zadd(keys.active, {jid: int(time.time() * 1000) + 300})
        r.hset(keys.job(jid), mapping={"token": "999999", "worker": "ghost@dead"})
        r.sadd(keys.worker_jobs("ghost@dead"), jid)
    damage(r, keys.job(jid), kind)
    return jid


def outcome(q: Queue, r: redis.Redis, jid: str) -> tuple[str, str] | None:
    """("failed", reason) or ("malformed", reason), or None while undecided."""
    keys = q.core.keys
    if r.zscore(keys.malformed, jid) is not None:
        return "malformed", (r.hget(keys.malformed_why, jid) or b"").decode()
    if r.zscore(keys.failed, jid) is not None:
        h = r.hgetall(keys.job(jid))
        assert h.get(b"error_type") == b"MalformedJob", (jid, h)
        return "failed", h[b"failed_reason"].decode()
    return None


def test_damaged_jobs_fail_alone_in_every_state(tmp_path: Path, redis_url: str, start: Any,
                                                queues: Any) -> None:
    name = f"sup-{uid()}"
    qnames = {"process": f"dmgp-{uid()}", "thread": f"dmgt-{uid()}"}
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name,
        [{"name": qn, "processor": f"{PROCS}:work", "mode": mode, "concurrency": 4}
         for mode, qn in qnames.items()],
        lease="3s", renew_interval="0.3s", stall_interval="0.5s"))
    r = sync_client(redis_url)
    flows = FlowProducer(redis_url)
    expected: dict[tuple[str, str], tuple[str, str]] = {}
    good: list[Any] = []
    for qn in qnames.values():
        q = queues(qn)
        good += [q.add("good", {"n": i, "startlog": str(startlog)}) for i in range(10)]
        for state in STATES:
            for kind, want in DAMAGE.items():
                expected[qn, plant(q, flows, r, state, kind)] = want
                good.append(q.add("good", {"n": 1, "startlog": str(startlog)},
                                  priority=3 if state == "prioritized" else 0))
    sup = start(cfg)
    # Damage while the live supervisor runs the job.
    live: list[tuple[Queue, Any, str]] = []
    for qn in qnames.values():
        q = queues(qn)
        for kind in LIVE_DAMAGE:
            job = q.add("slow", {"sleep": 1.5, "startlog": str(startlog)}, job_id=f"live-{kind}")
            live.append((q, job, kind))
            expected[qn, job.id] = DAMAGE[kind]
    assert len(expected) == len(qnames) * (len(STATES) * len(DAMAGE) + len(LIVE_DAMAGE))
    pending = list(live)

    def damage_the_started() -> bool:
        started = set(started_ids(startlog))
        for item in [i for i in pending if i[1].id in started]:
            q, job, kind = item
            damage(r, q.core.keys.job(job.id), kind)  # within ms of its start
            pending.remove(item)
        return not pending

    wait_until(damage_the_started, "every slow job started (and damaged)", 60)

    def undecided() -> list[tuple[str, str, str]]:
        return [(qn, jid, queues(qn).get_job(jid).state() if r.type(queues(qn).core.keys.job(jid))
                 == b"hash" else "?") for qn, jid in expected
                if outcome(queues(qn), r, jid) is None]

    deadline = time.monotonic() + 60
    while undecided() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not undecided(), (undecided(), sup.log()[-4000:])
    for (qn, jid), (want, text) in expected.items():
        got = outcome(queues(qn), r, jid)
        assert got is not None and got[0] == want and text in got[1], (qn, jid, got)
    wait_until(lambda: all(j.state() == "completed" for j in good), "every good job done", 60)
    # No queue stopped: fresh jobs still run, in both modes.
    more = [queues(qn).add("good", {"n": 2}) for qn in qnames.values() for _ in range(5)]
    wait_until(lambda: all(j.state() == "completed" for j in more), "fresh jobs done", 30)
    for qn in qnames.values():
        assert r.zcard(queues(qn).core.keys.active) == 0
    log = sup.log()
    assert "crashed" not in log and "Traceback" not in log, log[-3000:]
    flows.close()
    r.close()

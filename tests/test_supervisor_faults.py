"""``rqsup start`` against what is not a kill (issue 8): Redis unreachable at
start, a second supervisor under a live name, and an out-of-memory episode.
Real supervisor processes, a real redis-server (started, stopped and
squeezed by the test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner

from rqsup import Queue
from rqsup.cli import main as cli_main
from rqsup.redis_server import RedisServer, free_port
from tests.helpers import wait_until
from tests.procs import PROCS, REPO, RQSUP, NotifySocket, config_text, started_ids, uid, write


def test_start_waits_for_redis_without_ready_and_a_stop_ends_the_wait(
        tmp_path: Path, start: Any) -> None:
    """Given no Redis at the configured address, the supervisor waits (logging,
    no READY=1) instead of exiting; SIGTERM ends the wait at once with status 0;
    started again, it becomes ready as soon as Redis comes up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    name, qname = f"sup-{uid()}", f"later-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        url, name, [{"name": qname, "processor": f"{PROCS}:work"}]))
    ns = NotifySocket()
    server = None
    try:
        sup = start(cfg, env={"NOTIFY_SOCKET": ns.path})
        waiting = ns.next(lambda m: "waiting for Redis" in m.get("STATUS", ""),
                          "STATUS=waiting for Redis")
        assert "READY" not in waiting
        sup.wait_log(r"waiting for Redis at redis://127\.0\.0\.1")
        sent = time.monotonic()
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit(10) == 0
        assert time.monotonic() - sent < 3
        assert all("READY" not in m for m in ns.messages)

        sup2 = start(cfg, env={"NOTIFY_SOCKET": ns.path})
        sup2.wait_log(r"waiting for Redis", count=1)
        server = RedisServer(tmp_path / "redis", unix_socket=False, port=port).start()
        ns.next(lambda m: m.get("READY") == "1", "READY=1 once Redis is up", 20)
        q = Queue(qname, url)
        job = q.add("w", {"n": 21})
        assert job.wait(10)["n2"] == 42
        q.close()
        sup2.signal(signal.SIGTERM)
        assert sup2.wait_exit(15) == 0
    finally:
        ns.close()
        if server is not None:
            server.cleanup()


def test_a_second_supervisor_under_a_live_name_is_refused_at_once(
        tmp_path: Path, redis_url: str, start: Any) -> None:
    name, qname = f"sup-{uid()}", f"twice-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work"}]))
    first = start(cfg)
    first.wait_log(rf"supervisor {name} ready")
    began = time.monotonic()
    second = start(cfg)
    assert second.wait_exit(10) == 1
    assert time.monotonic() - began < 8  # not after the name's TTL
    assert "held by a live supervisor on this host" in second.log()
    first.check_running("after the second one was refused")
    first.signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0


def test_an_out_of_memory_episode_is_ridden_out(tmp_path: Path, private_redis: RedisServer,
                                                start: Any) -> None:
    """Given a supervisor running four jobs longer than its lease (with more
    waiting), when Redis refuses writes for longer than a lease (maxmemory
    reached, noeviction), then no loop of the supervisor dies, leases are
    still renewed (no job stalls or runs twice), the episode is logged once
    per loop with a line when Redis answers again, every job completes once
    memory is back, and its heartbeat shows it alive in `rqsup status`."""
    url = private_redis.url
    name, qname = f"sup-{uid()}", f"oom-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        url, name, [{"name": qname, "processor": f"{PROCS}:work", "mode": "thread",
                     "concurrency": 4}], lease="2s", renew_interval="0.3s",
        stall_interval="0.5s", status_interval="0.5s"))
    q = Queue(qname, url)
    r = redis.Redis.from_url(url)
    long = q.add_bulk([{"name": "w", "data": {"n": i, "sleep": 4.0, "startlog": str(startlog)}}
                       for i in range(4)])
    short = q.add_bulk([{"name": "w", "data": {"n": i, "sleep": 0.01,
                                              "startlog": str(startlog)}} for i in range(50)])
    sup = start(cfg)
    wait_until(lambda: len(started_ids(startlog)) >= 4, "the long jobs running")
    r.config_set("maxmemory", "1")
    sup.wait_log(r"stall sweep: Redis out of memory", "the episode in the log", 15)
    lease_then = r.zscore(q.core.keys.active, long[0].id)
    assert lease_then is not None
    # Longer than a lease: renewals go on meanwhile (the deadline moves on).
    wait_until(lambda: (r.zscore(q.core.keys.active, long[0].id) or 0) > lease_then + 500,
               "a renewal during the episode", 5)
    time.sleep(1.5)  # and the episode goes on for longer than the lease
    r.config_set("maxmemory", "0")
    wait_until(lambda: all(j.state() == "completed" for j in long + short), "every job done", 60)
    sup.wait_log(r"stall sweep: Redis answers again", "the recovery in the log", 15)
    sup.check_running("after the episode")
    runs = started_ids(startlog)
    assert sorted(runs) == sorted(j.id for j in long + short), "a job ran twice or never"
    for j in long:
        j.refresh()
        assert j.stalled_count == 0
    assert r.zcard(q.core.keys.active) == 0
    log = sup.log()
    assert "crashed" not in log and "lease lost" not in log, log[-3000:]
    assert log.count("out of memory") < 10, log[-3000:]
    code = CliRunner().invoke(cli_main, ["status", "--queue", qname, "--url", url, "--json"])
    info = json.loads(code.output)
    assert [s["name"] for s in info["supervisors"]] == [name]
    assert info["supervisors"][0]["queues"][0]["state"] == "ok"
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    q.close()
    r.close()


def test_the_minimal_acl_is_enough_and_a_missing_command_is_named(
        tmp_path: Path, start: Any) -> None:
    """With the ACL docs/operations.md gives, the producer API, `rqsup check` and
    a supervisor work; with TIME taken away, the supervisor stays up and logs
    a permission error that says what rqsup needs (not a crash)."""
    from rqsup.queue.faults import MINIMAL_ACL

    ops = (REPO / "docs" / "operations.md").read_text()
    assert MINIMAL_ACL.replace("<prefix>", "rqsup") in ops
    server = RedisServer(tmp_path / "redis", unix_socket=False, appendonly=False).start()
    admin = redis.Redis.from_url(server.url)
    rules = MINIMAL_ACL.replace("<prefix>", "rqsup").split()
    admin.execute_command("ACL", "SETUSER", "worker", "reset", "on", ">pw", *rules)
    url = f"redis://worker:pw@127.0.0.1:{server.port}/0"
    name, qname = f"sup-{uid()}", f"acl-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        url, name, [{"name": qname, "processor": f"{PROCS}:work", "mode": "thread"}]))
    check = subprocess.run([RQSUP, "check", str(cfg)], capture_output=True, text=True,
                           cwd=REPO, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert check.returncode == 0, check.stdout + check.stderr
    q = Queue(qname, url)
    job = q.add("w", {"n": 4})
    sup = start(cfg)
    assert job.wait(15)["n2"] == 8
    q.add_bulk([{"name": "w", "data": {"n": i}} for i in range(5)])
    assert q.counts()["wait"] + q.counts()["completed"] >= 5
    # Take one command away: loops log it (naming the needed ACL) and go on.
    admin.execute_command("ACL", "SETUSER", "worker", "-time")
    sup.wait_log(r"rqsup needs at least: ACL SETUSER", "the permission error", 15)
    admin.execute_command("ACL", "SETUSER", "worker", "+time")
    later = q.add("w", {"n": 5})
    assert later.wait(15)["n2"] == 10
    sup.check_running("after the permission episode")
    assert "crashed" not in sup.log()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    q.close()
    admin.close()
    server.cleanup()

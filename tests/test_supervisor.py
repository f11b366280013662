"""``rqsup start``, end to end: the real supervisor process, real signals, real children.

Each test writes a config whose ``[redis] url`` is the test's private server,
starts ``rqsup start CONFIG`` (the console script), feeds it jobs with the
producer API and watches Redis, the supervisor's log (its stderr, in a file)
and the process table. Queue and supervisor names are unique per test, so
the process titles (``rqsup: child <queue>#<slot>``) of one test never match
another test's (or another run's) processes.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rqsup.queue.connection import sync_client
from tests.helpers import wait_until
from tests.procs import (
    PROCS,
    REPO,
    RQSUP,
    NotifySocket,
    alive,
    config_text,
    log_time,
    queue_states,
    started_ids,
    title,
    uid,
    write,
)

# -- 1. jobs flow; process titles --------------------------------------------------------


def test_jobs_flow_and_process_titles(tmp_path: Path, redis_url: str, start: Any,
                                      queues: Any) -> None:
    name, qname = f"sup-{uid()}", f"flow-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work", "concurrency": 2}]))
    sup = start(cfg)
    q = queues(qname)
    jobs = [q.add("n", {"n": i, "startlog": str(startlog)}) for i in range(10)]
    results = [j.wait(15) for j in jobs]
    assert [r["n2"] for r in results] == [2 * i for i in range(10)]
    assert {r["pid"] for r in results} <= {p.pid for _t, p in sup.children(qname)}
    sup.wait_log(rf"supervisor {name} ready: 1 queue\(s\) {qname} \(process x2\)")

    assert title(sup.ps).startswith(f"rqsup: supervisor {name}"), title(sup.ps)
    kids = sup.wait_children(qname, 2)
    assert [t.split(" idle")[0] for t, _p in kids] == [
        f"rqsup: child {qname}#0", f"rqsup: child {qname}#1"], kids
    wait_until(lambda: all(re.fullmatch(rf"rqsup: child {qname}#[01] idle( \(.*\))?", t)
                           for t, _p in sup.children(qname)), "both children titled idle")

    slow = q.add("slow", {"sleep": 3, "startlog": str(startlog)})
    busy = wait_until(lambda: [t for t, _p in sup.children(qname)
                               if f"busy job {slow.id}" in t],
                      "a child titled busy with the slow job")
    assert re.fullmatch(rf"rqsup: child {qname}#[01] busy job {slow.id}", busy[0]), busy
    wait_until(lambda: "(1 running)" in title(sup.ps), "the supervisor title counting 1 running")
    # get_workers: the supervisor, from its heartbeat, with the job it runs.
    [worker] = wait_until(lambda: [w for w in q.get_workers() if slow.id in w["jobs"]],
                          "get_workers listing the slow job")
    assert worker["name"] == name and worker["kind"] == "supervisor"
    assert worker["pid"] == sup.proc.pid and worker["mode"] == "process"
    assert worker["concurrency"] == 2 and q.get_workers_count() == 1
    assert slow.wait(15)["n2"] == 0
    assert queue_states(q) == {"completed": 11}


# -- 2. SIGKILL mid-run, restart: nothing lost, reruns bounded, recovery at once ----------


def test_sigkill_then_restart_loses_nothing(tmp_path: Path, redis_url: str, start: Any,
                                             queues: Any) -> None:
    name, qname = f"sup-{uid()}", f"kill-{uid()}"
    startlog = tmp_path / "starts"
    n_jobs = 40
    # A 60 s lease: only the restart's recovery can bring the left-over jobs back in time.
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work", "concurrency": 2}],
        lease="60s", renew_interval="1s", stall_interval="60s"))
    q = queues(qname)
    jobs = q.add_bulk([{"name": "j", "data": {"n": i, "sleep": 0.2, "startlog": str(startlog)}}
                       for i in range(n_jobs)])
    sup = start(cfg)
    wait_until(lambda: len(started_ids(startlog)) >= 10, "10 jobs started", 20)
    kids = sup.wait_children(qname, 2)
    family = sup.descendants()  # the forkserver and the children of this run
    active_before = {j.id for j in q.get_jobs("active")}
    sup.proc.kill()
    assert sup.wait_exit(5) == -signal.SIGKILL
    # Frozen now: exactly the jobs the dead run held.
    left_active = {j.id for j in q.get_jobs("active")}
    completed_before = q.counts()["completed"]
    assert left_active, "the kill should have left jobs active"
    assert completed_before < n_jobs

    # Children watch the supervisor through a pipe: they (and the forkserver) die too.
    wait_until(lambda: not any(alive(p) for p in family),
               f"no process of the killed run left (children were {list(kids)})", 10)

    restarted_at = time.monotonic()
    sup2 = start(cfg)
    log = sup2.wait_log(r"requeued \d+ job\(s\) left active by a previous run")
    m = re.search(rf"queue {qname}: requeued (\d+) job\(s\) left active by a previous run of "
                  rf"supervisor {name}: \[(.*?)\]", log)
    assert m, log
    requeued = set(re.findall(r"'([^']+)'", m.group(2)))
    assert requeued == left_active and int(m.group(1)) == len(left_active)
    wait_until(lambda: q.counts()["completed"] == n_jobs, "every job completed", 20)
    assert time.monotonic() - restarted_at < 20  # far below the 60 s lease

    assert queue_states(q) == {"completed": n_jobs}
    for j in jobs:
        assert q.get_job(j.id).return_value["n2"] == 2 * j.data["n"]
    runs = Counter(started_ids(startlog))
    assert set(runs) == {j.id for j in jobs}, "every job ran"
    reruns = {i for i, n in runs.items() if n > 1}
    assert all(n <= 2 for n in runs.values()), runs
    # Only a job the dead run held can run twice; at most the claimed ones (2 running,
    # 2 prefetched with concurrency 2).
    assert reruns <= left_active, (reruns, left_active, active_before)
    assert len(reruns) <= len(left_active) <= 4


# -- 3. SIGTERM: drain ------------------------------------------------------------------------


def test_sigterm_drains_running_jobs_and_leaves_waiting_ones(
    tmp_path: Path, redis_url: str, start: Any, queues: Any
) -> None:
    name, qname = f"sup-{uid()}", f"drain-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work", "concurrency": 2}],
        shutdown_grace="10s"))
    q = queues(qname)
    sup = start(cfg)
    sup.wait_children(qname, 2)
    jobs = q.add_bulk([{"name": "j", "data": {"n": i, "sleep": 1, "startlog": str(startlog)}}
                       for i in range(8)])
    wait_until(lambda: len(started_ids(startlog)) >= 2, "two jobs running")
    running = set(started_ids(startlog))
    sent = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
    assert time.monotonic() - sent < 6, "a drain of 1 s jobs took too long"

    ran = started_ids(startlog)
    assert len(ran) == len(set(ran)), f"a job ran twice: {ran}"
    states = {j.id: q.get_job(j.id).state() for j in jobs}
    completed = {i for i, s in states.items() if s == "completed"}
    # The running jobs ran to their end; everything else is back in wait, untouched.
    assert running <= completed == set(ran), (running, states)
    assert {i for i, s in states.items() if s != "completed"} == {j.id for j in jobs} - set(ran)
    assert set(states.values()) == {"completed", "wait"}, states
    assert queue_states(q) == {"completed": len(ran), "wait": len(jobs) - len(ran)}, states
    for j in jobs:
        if j.id in completed:
            assert q.get_job(j.id).return_value["n2"] == 2 * j.data["n"]
    log = sup.log()
    assert "SIGTERM received (graceful shutdown)" in log
    assert f"supervisor {name} stopped" in log


def test_sigterm_drain_starts_no_prefetched_job(
    tmp_path: Path, redis_url: str, start: Any, queues: Any
) -> None:
    name, qname = f"sup-{uid()}", f"prefetch-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work", "concurrency": 1}],
        shutdown_grace="10s"))
    q = queues(qname)
    sup = start(cfg)
    sup.wait_children(qname, 1)
    jobs = q.add_bulk([{"name": "j", "data": {"n": i, "sleep": 0.5, "startlog": str(startlog)}}
                       for i in range(3)])
    wait_until(lambda: len(started_ids(startlog)) == 1, "the first job running")
    # Concurrency 1 claims 2 (one running, one prefetched for the next free child).
    wait_until(lambda: q.counts()["active"] == 2, "a prefetched job claimed")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
    assert started_ids(startlog) == [jobs[0].id], "only the running job may run in a drain"
    assert [j.state() for j in jobs] == ["completed", "wait", "wait"]


def test_sigterm_requeues_a_job_longer_than_the_grace(
    tmp_path: Path, redis_url: str, start: Any, queues: Any
) -> None:
    name, qname = f"sup-{uid()}", f"grace-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep"}],
        shutdown_grace="1s"))
    q = queues(qname)
    sup = start(cfg)
    job = q.add("long", {"sleep": 30, "startlog": str(startlog)})
    wait_until(lambda: started_ids(startlog) == [job.id], "the long job running")
    [(_t, child)] = sup.children(qname)
    sent = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
    assert time.monotonic() - sent < 6
    assert job.state() == "wait"
    assert queue_states(q) == {"wait": 1}
    job.refresh()
    assert job.failed_reason is None and job.return_value is None
    wait_until(lambda: not alive(child), "the job's child killed")
    assert "gave back 1 unfinished job(s)" in sup.log()


# -- 4. a second SIGTERM: quick shutdown ------------------------------------------------------


def test_second_sigterm_is_a_quick_shutdown(tmp_path: Path, redis_url: str, start: Any,
                                            queues: Any) -> None:
    name, qname = f"sup-{uid()}", f"quick-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep",
                           "concurrency": 2}], shutdown_grace="60s"))
    q = queues(qname)
    sup = start(cfg)
    jobs = [q.add("long", {"sleep": 30, "startlog": str(startlog)}) for _ in range(2)]
    wait_until(lambda: len(started_ids(startlog)) == 2, "both long jobs running")
    kids = [p for _t, p in sup.children(qname)]
    sent = time.monotonic()
    sup.signal(signal.SIGTERM)
    sup.wait_log("stopping: no more claims")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    assert time.monotonic() - sent < 10, "quick shutdown should not wait out the 60 s grace"
    assert "quick shutdown: cutting running jobs short" in sup.log()
    assert [j.state() for j in jobs] == ["wait", "wait"]
    assert queue_states(q) == {"wait": 2}
    wait_until(lambda: not any(alive(p) for p in kids), "the children killed")


# -- 5. a lost lease stops the child ----------------------------------------------------------


def test_lost_lease_kills_the_child_and_drops_the_result(
    tmp_path: Path, redis_url: str, start: Any, queues: Any
) -> None:
    name, qname = f"sup-{uid()}", f"lease-{uid()}"
    startlog = tmp_path / "starts"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep"}],
        lease="10s", renew_interval="0.5s", stall_interval="60s"))
    q = queues(qname)
    sup = start(cfg)
    job = q.add("long", {"sleep": 30, "startlog": str(startlog)})
    wait_until(lambda: started_ids(startlog) == [job.id], "the long job running")
    [(t, child)] = sup.children(qname)
    assert f"busy job {job.id}" in t

    # Someone else now holds the lease: the job is still active, with another token.
    r = sync_client(redis_url)
    try:
        assert r.zscore(f"rqsup:{{{qname}}}:active", job.id) is not None
        r.hset(f"rqsup:{{{qname}}}:job:{job.id}", "token", "stolen")
        wait_until(lambda: not alive(child), "the child running the job killed", 10)
        sup.wait_log(rf"job {job.id} \(attempt 1/1\): lease lost at lease renewal")
        sup.check_running()
        job.refresh()
        assert job.return_value is None and job.finished_on_ms is None
        assert r.hget(f"rqsup:{{{qname}}}:job:{job.id}", "token") == b"stolen"
        assert job.state() == "active"  # the new holder's business, not ours
    finally:
        r.close()

    # The slot gets a fresh child and the supervisor goes on.
    after = q.add("quick", {"sleep": 0})
    assert after.wait(15) == "woke up"
    sup.check_running()
    job.refresh()
    assert job.return_value is None


# -- 6. SIGHUP: reload -----------------------------------------------------------------------


def test_sighup_reload_applies_queue_changes_without_losing_jobs(
    tmp_path: Path, redis_url: str, start: Any, queues: Any
) -> None:
    name, qa, qb = f"sup-{uid()}", f"reload-a-{uid()}", f"reload-b-{uid()}"
    startlog = tmp_path / "starts"
    path = tmp_path / "s.toml"
    queue_a = {"name": qa, "processor": f"{PROCS}:work", "concurrency": 1}
    write(path, config_text(redis_url, name, [queue_a]))
    a, b = queues(qa), queues(qb)
    sup = start(path)
    sup.wait_children(qa, 1)

    def some(n: int, tag: str) -> Any:
        return a.add_bulk([{"name": tag, "data": {"n": i, "sleep": 0.1,
                                                  "startlog": str(startlog)}}
                           for i in range(n)])

    before = some(6, "before")
    wait_until(lambda: started_ids(startlog), "a job running")
    write(path, config_text(redis_url, name, [
        {**queue_a, "concurrency": 2},
        {"name": qb, "processor": f"{PROCS}:work", "concurrency": 1},
    ]))
    sup.signal(signal.SIGHUP)
    during = some(6, "during")
    sup.wait_log(rf"reload: queue {qb} \(re\)started")
    after = some(6, "after")
    on_b = b.add("b", {"n": 21})
    assert on_b.wait(15)["n2"] == 42

    for j in before + during + after:
        assert j.wait(15)["n2"] == 2 * j.data["n"], j
    assert queue_states(a) == {"completed": 18}
    log = sup.log()
    assert "SIGHUP received: reloading the config" in log
    assert f"reload: queue {qa} (re)started" in log
    # The new settings run: queue a has two children now.
    kids = sup.wait_children(qa, 2)
    assert [t.split(" ")[2] for t, _p in kids] == [f"{qa}#0", f"{qa}#1"], kids

    # An invalid config is refused; the running one goes on.
    path.write_text(path.read_text().replace("[supervisor]", "[supervisor]\nbogus_key = 1"))
    sup.signal(signal.SIGHUP)
    log = sup.wait_log(r"reload: the new config is invalid; keeping the running one")
    assert "bogus_key" in log
    assert a.add("late", {"n": 5}).wait(15)["n2"] == 10
    assert b.add("late", {"n": 6}).wait(15)["n2"] == 12
    sup.check_running()


# -- 7. sd_notify -------------------------------------------------------------------------------


def test_sd_notify_sequence(tmp_path: Path, redis_url: str, start: Any) -> None:
    name, qname = f"sup-{uid()}", f"notify-{uid()}"
    path = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work", "concurrency": 2}]))
    ns = NotifySocket()
    try:
        sup = start(path, env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "2000000"})
        ready = ns.next(lambda m: "READY" in m, "READY=1")
        # Ready means booted: the children are there, with their titles, at that moment.
        kids = sup.children(qname)
        assert len(kids) == 2, (kids, sup.log())
        assert ready == {"READY": "1", "MAINPID": str(sup.pid), "STATUS": ready["STATUS"]}
        assert "running" in ready["STATUS"]
        assert all(m.get("READY") != "1" for m in ns.messages[:-1])
        # Children must never speak for the supervisor.
        for _t, p in kids:
            environ = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
            assert not [e for e in environ if e.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

        ns.next(lambda m: m.get("WATCHDOG") == "1", "WATCHDOG=1", 5)
        status = ns.next(lambda m: "STATUS" in m and "READY" not in m, "a STATUS= line", 5)
        assert re.fullmatch(r"0 running(, 0 waiting)?, loop lag p99 [\d.]+ ms",
                            status["STATUS"]), status
        ns.next(lambda m: m.get("WATCHDOG") == "1", "a second WATCHDOG=1", 5)

        sup.signal(signal.SIGHUP)
        reloading = ns.next(lambda m: "RELOADING" in m or "READY" in m, "RELOADING=1")
        assert reloading.get("RELOADING") == "1", reloading
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert ns.next(lambda m: "READY" in m or "STOPPING" in m, "READY=1 after the reload"
                       ).get("READY") == "1"

        sup.signal(signal.SIGTERM)
        stopping = ns.next(lambda m: "STOPPING" in m, "STOPPING=1")
        assert stopping["STOPPING"] == "1"
        assert sup.wait_exit(10) == 0
    finally:
        ns.close()


# -- 8. a processor that fails at import ------------------------------------------------------


@pytest.mark.parametrize("broken", [
    pytest.param("tests.fixtures.bad_import:work", id="ImportError"),
    pytest.param("tests.fixtures.broken_at_import:work", id="RuntimeError"),
])
def test_processor_failing_at_import_does_not_stop_other_queues(
    tmp_path: Path, redis_url: str, start: Any, queues: Any, broken: str
) -> None:
    name, good, bad = f"sup-{uid()}", f"good-{uid()}", f"bad-{uid()}"
    path = write(tmp_path / "s.toml", config_text(redis_url, name, [
        {"name": good, "processor": f"{PROCS}:work", "concurrency": 2},
        {"name": bad, "processor": broken},
    ]))
    g, b = queues(good), queues(bad)
    broken_jobs = [b.add("x", {"n": i}) for i in range(3)]
    sup = start(path)
    started = time.monotonic()
    sup.wait_log(rf"queue {bad}: child #0 of processor {re.escape(broken)} failed to boot")
    # Ready comes after every queue's first boot round: the healthy one booted fine.
    sup.wait_log(rf"supervisor {name} ready")
    assert not re.search(rf"queue {good}: child #\d .*failed to boot", sup.log()), sup.log()
    assert len(sup.children(good)) == 2

    assert [j.wait(15)["n2"] for j in [g.add("y", {"n": i}) for i in range(4)]] == [0, 2, 4, 6]

    # Boot failures back off: 0.5 s, 1 s, 2 s... between attempts, never a spin.
    log = sup.wait_log(rf"queue {bad}: child #0 of processor {re.escape(broken)} failed to boot",
                       count=3, timeout=15)
    elapsed = time.monotonic() - started
    failures = [line for line in log.splitlines()
                if re.search(rf"queue {bad}: (child #0 of processor .+ failed to boot"
                             r"|processor .+ failed)", line)]
    delays = [float(m.group(1)) for line in failures
              if (m := re.search(r"retrying in ([\d.]+)s", line))]
    assert delays[:3] == [0.5, 1.0, 2.0], failures
    times = [log_time(line) for line in failures]
    for (t0, t1), delay in zip(itertools.pairwise(times), delays, strict=False):
        assert t1 - t0 >= delay * 0.9, (failures, delays)
    assert len(failures) <= 2 + elapsed / 0.5, failures  # nowhere near a spin
    assert re.search(rf"queue {bad}: child #0 of processor {re.escape(broken)} failed to boot "
                     r"\((ImportError|RuntimeError): "
                     r"fixture: .+\); retrying in", failures[0]), failures[0]

    sup.check_running()
    assert queue_states(b) == {"wait": 3}
    assert [j.state() for j in broken_jobs] == ["wait"] * 3
    assert g.add("z", {"n": 50}).wait(15)["n2"] == 100

    # A supervisor with a broken queue still stops cleanly.
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
    assert queue_states(b) == {"wait": 3}


# -- 9. config errors at start ---------------------------------------------------------------


def test_unknown_config_key_exits_2_naming_file_and_key(tmp_path: Path, redis_url: str) -> None:
    path = write(tmp_path / "bad.toml", config_text(
        redis_url, f"sup-{uid()}", [{"name": "q", "processor": f"{PROCS}:work",
                                     "concurrenccy": 2}]))
    result = subprocess.run([RQSUP, "start", str(path)], capture_output=True, text=True,
                            cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result
    assert str(path) in result.stderr, result.stderr
    assert "queues[0].concurrenccy" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- cancellation through a real supervisor --------------------------------------------


def test_queue_cancel_reaches_a_process_child_under_rqsup_start(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    name, qname = f"sup-{uid()}", f"cancel-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:until_cancelled"}]))
    sup = start(cfg)
    q = queues(qname)
    job = q.add("c", {})
    wait_until(lambda: (q.get_job(job.id) or job).progress == "waiting", "the job running")
    assert q.cancel(job.id, "from the test") == "signalled"
    # The child's processor saw job.cancelled and returned: its value stands.
    assert job.wait(15) == {"stopped": "from the test"}
    sup.check_running("the cancel")

"""The operator's commands (issue 12): queues, events --follow, retry/remove/cancel
of one job, drain and obliterate with a confirmation, RQSUP_URL, errors that
name the option, and `rqsup worker` without a config file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rqsup import Queue
from rqsup.cli import main
from tests.helpers import wait_until
from tests.procs import PROCS, uid

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None
        ) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, env=env,
                                catch_exceptions=False)
    return result.exit_code, result.output


def fail_one(q: Queue, job_id: str) -> None:
    reply = q._driver.execute(q.core.script("claim", 1, "w1", 30_000))
    token = reply[1][1].decode()
    q._driver.execute(q.core.script("fail", 1, job_id, token, "bad", "ValueError", "", -1,
                                    -1, -1, ""))


def test_queues_lists_every_queue_under_the_prefix(redis_url: str) -> None:
    a, b = Queue("alpha", redis_url), Queue("beta", redis_url)
    a.add("x")
    b.add("y", delay=60)
    b.pause()
    code, out = run("queues", "--json", env={"RQSUP_URL": redis_url})
    info = json.loads(out)
    assert code == 0 and info["alpha"]["counts"]["wait"] == 1
    assert info["beta"]["counts"]["delayed"] == 1 and info["beta"]["paused"]
    code, out = run("queues", "--url", redis_url)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["queue", "wait", "prioritized"]
    assert any(line.startswith("beta") and line.endswith("(paused)") for line in lines)
    code, out = run("queues", "--url", redis_url, "--prefix", "other")
    assert code == 0 and "no queues under prefix 'other'" in out


def test_retry_remove_and_cancel_one_job(redis_url: str) -> None:
    q = Queue("ops", redis_url)
    job = q.add("x", attempts=1, remove_on_fail=False)
    fail_one(q, job.id)
    assert run("retry", "ops", job.id, "--url", redis_url) == (0, "1\n")
    assert job.state() == "wait" and job.refresh().attempts_made == 0
    waiting = q.add("y")
    code, out = run("cancel", "ops", waiting.id, "--reason", "nope", "--url", redis_url)
    assert code == 0 and "failed (not running)" in out
    assert q.get_job(waiting.id).failed_reason == "nope"  # type: ignore[union-attr]
    assert run("remove", "ops", job.id, "--url", redis_url)[0] == 0
    assert q.get_job(job.id) is None
    code, out = run("remove", "ops", "missing", "--url", redis_url)
    assert code == 1
    code, out = run("retry", "ops", "missing", "--url", redis_url)
    assert code == 1


def test_drain_and_obliterate_ask_first(redis_url: str) -> None:
    q = Queue("dr", redis_url)
    for _ in range(3):
        q.add("x")
    code, out = run("drain", "dr", "--url", redis_url, input="n\n")
    assert code == 1 and "Delete 3 job(s)" in out and q.counts()["wait"] == 3  # Aborted
    code, out = run("drain", "dr", "--url", redis_url, input="y\n")
    assert code == 0 and out.strip().endswith("3") and q.counts()["wait"] == 0
    q.add("x")
    code, out = run("obliterate", "dr", "--url", redis_url, input="n\n")
    assert code == 1 and q.counts()["wait"] == 1
    assert run("obliterate", "dr", "--url", redis_url, "--yes")[0] == 0
    assert q.counts()["wait"] == 0 and not q.client.keys("*{dr}*")


def test_events_follow_prints_new_events_in_local_time(redis_url: str) -> None:
    q = Queue("evf", redis_url)
    q.add("first")
    proc = subprocess.Popen([sys.executable, "-m", "rqsup.cli", "events", "evf", "--follow",
                             "--url", redis_url], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " added job 1 " in first and first[:2] == "20"  # a date, not a stream id
        q.add("second")
        assert " added job 2 " in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_errors_name_the_option_and_a_wait_that_times_out_says_so(redis_url: str) -> None:
    code, out = run("status", "--url", "http://nope", "--queue", "q")
    assert code == 2 and "--url" in out
    code, out = run("enqueue", "slow", "x", "--url", redis_url, "--wait", "0.2")
    assert code == 1 and "did not finish within 0.2s" in out and "unreachable" not in out
    code, out = run("retry")
    assert code == 2  # a usage error


def test_rqsup_worker_serves_a_queue_without_a_config(redis_url: str) -> None:
    qname = f"wk-{uid()}"
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "rqsup"), "worker", f"{PROCS}:work", "--queue", qname,
         "--concurrency", "2"], cwd=REPO, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RQSUP_URL": redis_url})
    try:
        q = Queue(qname, redis_url)
        jobs = [q.add("n", {"n": i}) for i in range(4)]
        assert [j.wait(30)["n2"] for j in jobs] == [0, 2, 4, 6]
        assert wait_until(lambda: q.get_workers_count() == 1, "its heartbeat")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    bad = subprocess.run([str(REPO / ".venv" / "bin" / "rqsup"), "worker", "nomodule",
                          "--queue", qname, "--url", redis_url], capture_output=True, text=True)
    assert bad.returncode == 2 and "rqsup worker" in bad.stderr and "processor" in bad.stderr



def test_the_wait_progress_bar_follows_the_jobs_progress_events(redis_url: str) -> None:
    import threading

    from rqsup.cli.admin import _show_progress

    q = Queue("bar", redis_url)
    job = q.add("x")
    reply = q._driver.execute(q.core.script("claim", 1, "w1", 30_000))
    token = reply[1][1].decode()
    done = threading.Event()
    t = threading.Thread(target=lambda: (_show_progress(q, job.id, job.added_event, 20),
                                         done.set()))
    t.start()
    q._driver.execute(q.core.script("progress", job.id, token, "50"))
    assert not done.wait(0.3)  # still following: the job runs on
    q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000, job.id, token, '"ok"',
                                    -1, -1))
    assert done.wait(10), "the bar did not end with the job"
    t.join()


def test_clean_and_retry_go_in_steps_past_a_thousand(redis_url: str) -> None:
    q = Queue("steps", redis_url)
    q.add_bulk([("x", i) for i in range(2500)])
    code, out = run("clean", "steps", "--state", "wait", "--grace", "0s", "--limit", "2200",
                    "--url", redis_url)
    assert code == 0 and out.strip() == "2200" and q.counts()["wait"] == 300
    q.drain()
    failing = [q.add("y", attempts=1, remove_on_fail=False) for _ in range(3)]
    for job in failing:
        fail_one(q, job.id)
    assert run("retry", "steps", "--url", redis_url) == (0, "3\n")


def test_json_everywhere_with_typed_values_and_an_aligned_jobs_table(redis_url: str) -> None:
    q = Queue("js", redis_url)
    code, out = run("enqueue", "js", "x", '{"a": 1}', "--url", redis_url, "--json")
    added = json.loads(out)
    assert code == 0 and added["outcome"] == "created" and isinstance(added["id"], str)
    for args in (("pause", "js"), ("resume", "js"), ("promote", "js"), ("drain", "js", "-y"),
                 ("retry", "js"), ("clean", "js", "--state", "wait", "--grace", "0s")):
        code, out = run(*args, "--url", redis_url, "--json")
        info = json.loads(out)
        assert code == 0 and info["queue"] == "js" and info["action"] == args[0], out
        if args[0] in ("drain", "retry", "clean"):
            assert isinstance(info["count"], int)
    job = q.add("y")
    code, out = run("cancel", "js", job.id, "--url", redis_url, "--json")
    assert json.loads(out)["outcome"] == "failed"
    code, out = run("jobs", "js", "--state", "failed", "--url", redis_url)
    head, row = out.splitlines()[:2]
    assert head.split() == ["id", "name", "attempts", "time"]
    assert row.split()[0] == job.id and row.index("JobCancelled") > head.index("time")
    code, out = run("remove", "js", job.id, "--url", redis_url, "--json")
    assert json.loads(out) == {"queue": "js", "action": "remove", "count": 1, "job_id": job.id}

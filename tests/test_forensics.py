"""Stall forensics (issue 11): a job records who held its lease (worker, pid)
and when it was last renewed; a stall records when; the stalled event and
``rqsup job`` show them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import wait_until
from tests.procs import PROCS, config_text, uid, write

REPO = Path(__file__).resolve().parents[1]


def test_a_killed_supervisor_leaves_who_held_the_job_and_when(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    name, qname = f"sup-{uid()}", f"fx-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep"}]))
    sup = start(cfg)
    q = queues(qname)
    job = q.add("sleepy", {"sleep": 60})
    [(_title, child)] = wait_until(lambda: [c for c in sup.children(qname)
                                            if f"busy job {job.id}" in c[0]], "the job running")
    held = wait_until(lambda: (j := q.get_job(job.id)) and j.lease["renewed_at_ms"] and j,
                      "a renewal recorded")
    assert held.lease["holder_pid"] == child.pid
    assert held.lease["worker"].startswith(f"{name}@")
    sup.signal(signal.SIGKILL)
    sup.wait_exit(10)
    # As the next supervisor's sweep would, once the lease ran out.
    q.client.zadd(q.core.keys.active, {job.id: 0})
    q._driver.execute(q.core.script("sweep_stalled", 0, 5, 0, 100, 5, -1))
    stalled = q.get_job(job.id)
    assert stalled is not None and stalled.lease["stalled_count"] == 1
    assert stalled.lease["stalled_at_ms"] >= held.lease["renewed_at_ms"]
    [event] = [e for _i, e in q.client.xrange(q.core.keys.events)
               if e[b"event"] == b"stalled"]
    assert int(event[b"holder_pid"]) == child.pid
    assert event[b"worker"].decode() == held.lease["worker"]
    assert int(event[b"renewed_at"]) == held.lease["renewed_at_ms"]
    out = subprocess.run([sys.executable, "-m", "rqsup.cli", "job", qname, job.id, "--url",
                          redis_url, "--json"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["lease"]["holder_pid"] == child.pid and shown["state"] == "wait"
    human = subprocess.run([sys.executable, "-m", "rqsup.cli", "job", qname, job.id, "--url",
                            redis_url], capture_output=True, text=True, cwd=REPO)
    assert f"pid {child.pid}" in human.stdout and "stalled 1 time(s)" in human.stdout
    missing = subprocess.run([sys.executable, "-m", "rqsup.cli", "job", qname, "nope",
                              "--url", redis_url], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1 and "no job 'nope'" in missing.stderr

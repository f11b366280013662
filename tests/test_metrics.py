"""Prometheus metrics (issue 11) from a real supervisor, a standalone Worker and
``rqsup metrics``, scraped over HTTP and parsed as Prometheus does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rqsup import AsyncQueue, Queue
from rqsup.config.model import parse_config
from rqsup.errors import ConfigError
from rqsup.observe.metrics import Metrics
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import wait_until
from tests.procs import PROCS, config_text, uid, write

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_a_supervisor_serves_job_queue_child_and_own_metrics(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    port = free_port()
    name, qname = f"sup-{uid()}", f"m-{uid()}"
    text = config_text(redis_url, name, [
        {"name": qname, "processor": f"{PROCS}:work", "concurrency": 2},
        {"name": f"{qname}-bad", "processor": f"{PROCS}:fails", "concurrency": 1}])
    cfg = write(tmp_path / "s.toml", text + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    sup = start(cfg)
    q, bad = queues(qname), queues(f"{qname}-bad")
    jobs = [q.add("square", {"n": i, "burn": 0.05}) for i in range(5)]
    for j in jobs:
        j.wait(15)
    failing = bad.add("boom", attempts=2)
    with pytest.raises(Exception, match="always fails"):
        failing.wait(15)
    q.add("later", delay=3600)
    samples = wait_until(lambda: (s := scrape(port)) and value(
        s, "rqsup_queue_consumers", queue=qname) == 1 and s, "a scrape with the consumer")
    assert value(samples, "rqsup_jobs_completed_total", queue=qname, name="square") == 5
    assert value(samples, "rqsup_jobs_retried_total", queue=f"{qname}-bad", name="boom") == 1
    assert value(samples, "rqsup_jobs_failed_total", queue=f"{qname}-bad", name="boom",
                 reason="error") == 1
    assert value(samples, "rqsup_job_run_seconds_count", queue=qname) == 5
    assert value(samples, "rqsup_job_wait_seconds_count", queue=qname) == 5
    assert value(samples, "rqsup_queue_jobs", queue=qname, state="completed") == 5
    assert value(samples, "rqsup_queue_jobs", queue=qname, state="delayed") == 1
    assert value(samples, "rqsup_queue_paused", queue=qname) == 0
    wait_until(lambda: value(scrape(port), "rqsup_children", queue=qname, state="idle") == 2,
               "both children idle in the metrics")
    samples = scrape(port)
    assert value(samples, "rqsup_child_rss_bytes", queue=qname) > 1 << 20
    assert value(samples, "rqsup_child_cpu_seconds_total", queue=qname) > 0
    assert value(samples, "rqsup_supervisor_up") == 1
    assert value(samples, "rqsup_build_info", version=__import__("rqsup").__version__) == 1
    assert value(samples, "rqsup_supervisor_loop_lag_seconds_count") > 0
    # No label carries a job id or data.
    for (metric, labels) in samples:
        for key, val in labels:
            assert key in {"queue", "name", "reason", "state", "task", "le", "version"}, metric
            assert val not in {j.id for j in jobs}, (metric, key)
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(20) == 0


def test_a_worker_counts_stalls_redeliveries_and_the_oldest_waiting(redis_url: str) -> None:
    async def proc(job: ActiveJob) -> Any:
        return None

    async def main() -> None:
        q = AsyncQueue("md", redis_url)
        sync = Queue("md", redis_url)
        job = await q.add("x")
        sync._driver.execute(sync.core.script("claim", 1, "ghost", 30_000))
        sync.client.zadd(sync.core.keys.active, {job.id: 0})  # its holder died
        m = Metrics()
        w = Worker("md", proc, url=redis_url, stall_interval_s=0.2, max_stalled_count=3,
                   metrics=m)
        wt = asyncio.create_task(w.run())
        await q.wait_for(job.id, timeout=10)
        qm = m.for_queue("md")
        assert qm.stalled.n == 1 and qm.redelivered.n == 1
        # The claim emptied the marker: a later claim of the job is no redelivery.
        assert sync.client.hget(sync.core.keys.job(job.id), "redeliver") == b""
        # A job that ran once, cleanly, is not a redelivery when retried.
        again = await q.add("x", attempts=2)
        await q.wait_for(again.id, timeout=10)
        assert qm.redelivered.n == 1
        await w.close(5)
        await wt
        sync.close()
        await q.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_rqsup_metrics_serves_the_queues_it_finds(redis_url: str) -> None:
    q = Queue(f"found-{uid()}", redis_url)
    job = q.add("x")
    q.client.hset(q.core.keys.job(job.id), "timestamp", int(time.time() * 1000) - 120_000)
    q.pause()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rqsup.cli", "metrics", "--url", redis_url,
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        samples = wait_until(lambda: _try_scrape(port), "rqsup metrics answering")
        assert value(samples, "rqsup_queue_jobs", queue=q.name, state="wait") == 1
        assert 119 <= value(samples, "rqsup_queue_oldest_waiting_seconds", queue=q.name) < 200
        assert value(samples, "rqsup_queue_paused", queue=q.name) == 1
        assert value(samples, "rqsup_queue_consumers", queue=q.name) == 0
        assert not any(k[0].startswith("rqsup_jobs_") for k in samples)  # the queues only
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    q.close()


def _try_scrape(port: int) -> Any:
    try:
        return scrape(port)
    except OSError:
        return None


def test_bad_metrics_config_names_the_key(tmp_path: Path) -> None:
    for bad in ('listen = "nowhere"', "listen = 9464", "queue_gauges = 1", "lissten = 'x'"):
        raw = {"supervisor": {"name": "s"}, "queues": [{"name": "q", "processor": "m:f"}]}
        import tomllib

        raw["metrics"] = tomllib.loads(bad)
        with pytest.raises(ConfigError, match=r"metrics"):
            parse_config(raw, tmp_path / "c.toml")


def test_a_metrics_port_in_use_leaves_the_queues_running(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        name, qname = f"sup-{uid()}", f"busy-{uid()}"
        cfg = write(tmp_path / "s.toml", config_text(
            redis_url, name, [{"name": qname, "processor": f"{PROCS}:work"}])
            + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        sup = start(cfg)
        assert queues(qname).add("x", {"n": 2}).wait(15)["n2"] == 4
        sup.wait_log(r"cannot listen there .*running without /metrics")

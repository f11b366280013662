"""``python -m rqsup.demo [CONFIG]``: the quickstart. Runs ``rqsup start CONFIG``
(configs/dev.toml: a private redis-server if none answers, three demo queues),
adds demo jobs as a producer would, prints each one as it finishes, then stops
the supervisor with SIGTERM (a graceful drain) and exits 0 if every job
completed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from rqsup.config.model import load_config
from rqsup.errors import JobFailed
from rqsup.keys import supervisor_key
from rqsup.queue.job import Job
from rqsup.queue.queue import Queue

#: In a checkout: the repository's configs/dev.toml. From an installed wheel:
#: the copy shipped in the package, written to a folder of the user's
#: (its private redis-server keeps its data there, never in site-packages).
REPO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dev.toml"
PACKAGED_CONFIG = Path(__file__).resolve().parent / "demo_dev.toml"


def default_config() -> Path:
    if REPO_CONFIG.exists():
        return REPO_CONFIG
    import os

    home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    folder = home / "rqsup-demo"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "dev.toml"
    target.write_text(PACKAGED_CONFIG.read_text())
    return target


def wait_ready(url: str, key: str, sup: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the supervisor holds its name in Redis (it does so before READY)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if sup.poll() is not None:
                raise SystemExit(f"demo: the supervisor exited with {sup.returncode}")
            try:
                if client.exists(key):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise SystemExit(f"demo: the supervisor was not ready within {timeout_s:g}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config", nargs="?", default=None)
    args = ap.parse_args(argv)
    if args.config is None:
        args.config = str(default_config())
    cfg = load_config(args.config)
    print(f"demo: starting `rqsup start {args.config}`", flush=True)
    sup = subprocess.Popen([sys.executable, "-m", "rqsup.cli", "start", args.config])
    ok = False
    try:
        wait_ready(cfg.redis.url, supervisor_key(cfg.redis.prefix, cfg.supervisor.name), sup,
                   30)
        queues = {q.name: Queue(q.name, cfg.redis.url, prefix=cfg.redis.prefix)
                  for q in cfg.queues}
        jobs: list[tuple[str, Job]] = []

        def add(queue: str, name: str, data: Any) -> None:
            if queue in queues:
                job = queues[queue].add(name, data)
                jobs.append((queue, job))
                print(f"demo: added {queue}/{name} job {job.id} {data}", flush=True)

        for n in (150_000, 200_000, 250_000, 300_000):
            add("cpu", "primes", {"n": n})
        add("flaky", "call-upstream", {"failures": 2})
        add("slow", "report", {"steps": 6, "step_s": 0.2})
        failed = 0
        for queue, job in jobs:
            try:
                value = job.wait(timeout=60)
                rec = queues[queue].get_job(job.id)
                tries = rec.attempts_made if rec else "?"
                print(f"demo: finished {queue}/{job.id} after {tries} attempt(s) -> {value}",
                      flush=True)
            except (JobFailed, TimeoutError) as exc:
                failed += 1
                print(f"demo: {queue}/{job.id} did not complete: {exc}", flush=True)
        ok = failed == 0
        for q in queues.values():
            q.close()
    finally:
        if sup.poll() is None:
            print("demo: sending SIGTERM to the supervisor (graceful drain)", flush=True)
            sup.send_signal(signal.SIGTERM)
            try:
                sup.wait(30)
            except subprocess.TimeoutExpired:
                sup.kill()
    print(f"demo: supervisor exited with {sup.returncode}; "
          f"{'all jobs completed' if ok else 'some jobs did not complete'}")
    return 0 if ok and sup.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard response times (issue 12): the overview of 50 queues and a job
list page, with 100,000 retained jobs, on a private redis-server.

    .venv/bin/python benchmarks/bench_dashboard.py [--runs 20]

Times each request through Starlette's TestClient (in process, no network
between the client and the app; Redis over its unix socket): median and max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from starlette.testclient import TestClient

from rqsup import Queue
from rqsup.dashboard import create_app
from rqsup.redis_server import RedisServer


def timed(client: TestClient, path: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=100_000)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(d, appendonly=False)
        server.start()
        try:
            for i in range(49):
                Queue(f"q{i:02d}", server.url).add_bulk([("x", {"i": j}) for j in range(20)])
            big = Queue("big", server.url)
            for start in range(0, args.jobs, 10_000):
                big.add_bulk([("x", {"i": j, "text": f"job number {j}"})
                              for j in range(start, start + 10_000)])
            with TestClient(create_app(url=server.url)) as client:
                for name, path in (("overview, 50 queues", "/"),
                                   ("queue page, 50 of 100,000 waiting", "/queues/big?state=wait"),
                                   ("job list API, 50 jobs", "/api/queues/big/jobs?state=wait"),
                                   ("job page", "/queues/big/jobs/50000"),
                                   ("search, one scan of 2,000",
                                    "/api/queues/big/jobs?state=wait&q=zzz")):
                    timed(client, path, 2)  # warm up
                    ms = timed(client, path, args.runs)
                    print(f"{name:40} median {statistics.median(ms):7.1f} ms, "
                          f"max {max(ms):7.1f} ms", flush=True)
        finally:
            server.cleanup()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""The rate limiter's overhead: claim throughput with a limit far above what
one worker achieves, against no limiter (same jobs, same worker).

    .venv/bin/python benchmarks/bench_limits.py [--quick] [--json PATH]

A private redis-server (unix socket); 20,000 no-op jobs drained by one async
worker (concurrency 50); each row is the median of 3 runs (1 with --quick),
runs interleaved so a slow spell hits both rows alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_core import _drain_with_worker, fresh, machine_info
from rqsup import Queue
from rqsup.redis_server import RedisServer

JOBS = 20_000
CONCURRENCY = 50


def one_run(q: Queue, url: str, limited: bool) -> float:
    fresh(q)
    if limited:
        q.set_rate_limit(10_000_000, 1.0)  # never reached: only its bookkeeping costs
        q.set_global_concurrency(1_000_000)
    else:
        q.remove_rate_limit()
        q.set_global_concurrency(None)
    q.add_bulk([("n", {"i": i}) for i in range(JOBS)])
    elapsed, notes = asyncio.run(_drain_with_worker(url, q.name, "async", CONCURRENCY, JOBS))
    if notes:
        print("notes:", notes, file=sys.stderr)
    return JOBS / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else 3
    server = RedisServer(appendonly=False).start()
    try:
        url = server.url
        info = machine_info(url, "unix socket")
        q = Queue("bench-limits", url)
        rows: dict[str, list[float]] = {"none": [], "limited": []}
        load0 = os.getloadavg()
        for r in range(runs):
            for kind in ("none", "limited"):
                rows[kind].append(one_run(q, url, kind == "limited"))
                print(f"  {kind}: run {r + 1}/{runs} {rows[kind][-1]:,.0f} jobs/s",
                      file=sys.stderr)
        med = {k: statistics.median(v) for k, v in rows.items()}
        overhead = 1 - med["limited"] / med["none"]
        print(f"\nrqsup bench_limits: {info['cores']} cores, {info['cpu_model']}, Python "
              f"{info['python']}, redis-server {info['redis_server']}, {info['rqsup']}; load "
              f"{[round(x, 2) for x in load0]} -> {[round(x, 2) for x in os.getloadavg()]}")
        print(f"{'benchmark':58} | {'median':>8} | {'min':>8} | {'max':>8}")
        print(f"{'async no-op, no limiter (jobs/s)':58} | {med['none']:8,.0f} | "
              f"{min(rows['none']):8,.0f} | {max(rows['none']):8,.0f}")
        print(f"{'async no-op, rate limit 10M/s + concurrency cap (jobs/s)':58} | "
              f"{med['limited']:8,.0f} | {min(rows['limited']):8,.0f} | "
              f"{max(rows['limited']):8,.0f}")
        print(f"limiter overhead: {overhead * 100:.1f}% of throughput")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": rows, "median": med,
                                                   "overhead": overhead, "info": info}))
        q.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

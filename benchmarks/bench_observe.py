"""Metrics and history on against off (issue 11): no-op throughput in async
and process modes, alternating within one run, on a private redis-server.

    .venv/bin/python benchmarks/bench_observe.py [--rounds 3] [--jobs 20000]

"on": the worker counts into a Metrics registry (Prometheus) and the queue
keeps per-minute history (the default); "off": no registry, history 0.
Prints each round and the medians; the ratio on/off is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rqsup import Queue
from rqsup.observe.metrics import Metrics
from rqsup.redis_server import RedisServer
from rqsup.supervisor import Worker

PROCESS_NOOP = "benchmarks.bench_procs:noop"


async def _noop(job: Any) -> None:
    return None


async def _drain(url: str, queue: str, mode: str, n: int, on: bool) -> float:
    proc: Any = _noop if mode == "async" else PROCESS_NOOP
    conc = 200 if mode == "async" else 2
    w = Worker(queue, proc, url=url, mode=mode, concurrency=conc,
               metrics=Metrics() if on else None)
    await w.prepare()
    t0 = time.perf_counter()
    task = asyncio.create_task(w.run())
    while w.processed < n:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await w.close()
    await task
    return n / elapsed


#: What "on" turns on: both (the figure), or one of them (to see which costs).
WHAT = {"both"}


def one(url: str, mode: str, n: int, on: bool, i: int) -> float:
    name = f"obs-{mode}-{'on' if on else 'off'}-{i}"
    q = Queue(name, url)
    q.set_history(7 * 86400 if on and WHAT & {"both", "history"} else 0)
    q.add_bulk([{"name": "x", "data": {"i": j}} for j in range(n)])
    rate = asyncio.run(_drain(url, name, mode, n, on and bool(WHAT & {"both", "metrics"})))
    q.obliterate(force=True)
    q.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--what", choices=("both", "metrics", "history"), default="both")
    ap.add_argument("--modes", default="async,process")
    args = ap.parse_args()
    WHAT.clear()
    WHAT.add(args.what)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(d, appendonly=False)
        server.start()
        try:
            for mode in args.modes.split(","):
                n = args.jobs if mode == "async" else args.jobs // 2
                rates: dict[bool, list[float]] = {True: [], False: []}
                for i in range(args.rounds):
                    for on in ((False, True) if i % 2 == 0 else (True, False)):
                        rates[on].append(one(server.url, mode, n, on, i))
                        print(f"{mode} {'on ' if on else 'off'} round {i}: "
                              f"{rates[on][-1]:,.0f} jobs/s", flush=True)
                off, on_ = statistics.median(rates[False]), statistics.median(rates[True])
                print(f"{mode}: off {off:,.0f} jobs/s, on {on_:,.0f} jobs/s, "
                      f"on/off {on_ / off:.3f}", flush=True)
        finally:
            server.cleanup()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

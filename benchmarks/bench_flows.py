"""Flows: a parent with 1,000 children, from the add to the parent completed.

    .venv/bin/python benchmarks/bench_flows.py [--quick] [--json PATH]

A private redis-server (unix socket). Async workers (concurrency 50, no-op
children, the parent reads its 1,000 children values) run in this process
and are idle when the flow is added. Rows:

- flow add: one ``AsyncFlowProducer.add`` of 1 parent + 1,000 children (one
  script call);
- add -> parent completed, children in the parent's queue (one worker);
- the same with the children in a second queue (one worker per queue);
- baseline: 1,001 plain jobs (``add_bulk``) drained by the same worker.

Each row is the median of 3 runs (1 with --quick), on freshly obliterated queues.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_core import machine_info
from rqsup import AsyncFlowProducer, AsyncQueue
from rqsup.redis_server import RedisServer
from rqsup.supervisor import ActiveJob, Worker

CHILDREN = 1_000
CONCURRENCY = 50
DEADLINE_S = 60.0


async def _proc(job: ActiveJob) -> Any:
    if job.name == "parent":
        values = job.children_values()
        if len(values) != CHILDREN:
            raise RuntimeError(f"parent saw {len(values)} children values")
        return len(values)
    return job.data


async def one_run(url: str, kind: str, run: int) -> tuple[float, float]:
    """Returns (add seconds, add -> parent completed seconds)."""
    qp, qc = f"bench-flow-{kind}-{run}", f"bench-flow-{kind}-{run}-c"
    queues = [qp] if kind != "two" else [qp, qc]
    workers = [Worker(q, _proc, url=url, concurrency=CONCURRENCY) for q in queues]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    fp = AsyncFlowProducer(url)
    parent = AsyncQueue(qp, url)
    try:
        await fp._driver.load_scripts()  # not timed: connecting, SCRIPT LOAD
        await parent._driver.load_scripts()
        await asyncio.sleep(0.3)  # the workers are up and blocked for work
        t0 = time.perf_counter()
        if kind == "plain":
            jobs = await parent.add_bulk([("leaf", i) for i in range(CHILDREN + 1)])
            added = time.perf_counter() - t0
            while sum(w.processed for w in workers) < CHILDREN + 1:
                await asyncio.sleep(0.001)
                if time.perf_counter() - t0 > DEADLINE_S:
                    raise TimeoutError("plain jobs not drained")
            assert len(jobs) == CHILDREN + 1
        else:
            child_queue = qc if kind == "two" else qp
            root = await fp.add({"name": "parent", "queue": qp, "children": [
                {"name": "leaf", "queue": child_queue, "data": i} for i in range(CHILDREN)]})
            added = time.perf_counter() - t0
            result = await parent.wait_for(root.id, DEADLINE_S)
            if result != CHILDREN:
                raise RuntimeError(f"parent returned {result!r}")
        total = time.perf_counter() - t0
    finally:
        for w in workers:
            await w.close(5)
        await asyncio.gather(*tasks)
        for q in queues:
            aq = AsyncQueue(q, url)
            await aq.obliterate(force=True)
            await aq.close()
        await fp.close()
        await parent.close()
    return added, total


ROWS = (
    ("one", "flow 1 + 1,000 children, one queue: add -> parent completed (ms)"),
    ("two", "flow 1 + 1,000 children in a 2nd queue: add -> parent completed (ms)"),
    ("plain", "baseline: 1,001 plain jobs, add_bulk -> all completed (ms)"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run per row instead of 3")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else 3
    server = RedisServer(appendonly=False).start()
    try:
        url = server.url
        info = machine_info(url, "unix socket")
        load0 = os.getloadavg()
        adds: dict[str, list[float]] = {k: [] for k, _ in ROWS}
        totals: dict[str, list[float]] = {k: [] for k, _ in ROWS}
        for r in range(runs):
            for kind, _label in ROWS:  # interleaved: a slow spell hits every row
                added, total = asyncio.run(one_run(url, kind, r))
                adds[kind].append(added * 1000)
                totals[kind].append(total * 1000)
                print(f"  {kind}: run {r + 1}/{runs}: add {added * 1000:.1f} ms, "
                      f"total {total * 1000:.1f} ms", file=sys.stderr)
        print(f"\nrqsup bench_flows: {info['cores']} cores, {info['cpu_model']}, Python "
              f"{info['python']}, redis-server {info['redis_server']}, {info['rqsup']}; load "
              f"{[round(x, 2) for x in load0]} -> {[round(x, 2) for x in os.getloadavg()]}")
        print(f"async workers, concurrency {CONCURRENCY}; median of {runs} run(s)")
        print(f"{'benchmark':70} | {'median':>8} | {'min':>8} | {'max':>8}")
        table = [("add", "flow add: 1 parent + 1,000 children, one script call (ms)",
                  adds["one"])]
        table += [(k, label, totals[k]) for k, label in ROWS]
        for _k, label, v in table:
            print(f"{label:70} | {statistics.median(v):8.1f} | {min(v):8.1f} | {max(v):8.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"info": info, "runs": runs, "add_ms": adds, "total_ms": totals}, indent=2))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

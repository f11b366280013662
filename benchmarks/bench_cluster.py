#!/usr/bin/env python3
"""rqsup on one Redis, on a 6-node Redis Cluster and on Sentinel, side by side.

    .venv/bin/python benchmarks/bench_cluster.py              # N = 10,000, 3 runs
    .venv/bin/python benchmarks/bench_cluster.py --n 3000 --reps 1
    .venv/bin/python benchmarks/bench_cluster.py --failover   # + the failover runs, longer

Rows (each the median of ``--reps`` runs, taken in turn so load falls on all):

- processing, no-op jobs: 2 worker processes, async workers with 30 slots in
  all per process: one queue on one Redis; one queue of 3 partitions on one
  Redis; 3 queues on the Cluster (one per primary); one queue of 3 partitions
  on the Cluster. With Redis CPU (all nodes' used_cpu_sys + used_cpu_user)
  and Redis commands (INFO commandstats, Lua's inner calls included) per job;
- request/response: 200 sequential calls to an idle async worker, p50/p99, on
  one Redis and on the Cluster;
- ``wait_replicas``: single adds per second and processing on the Sentinel
  primary (2 replicas) with wait_replicas 0 and 1.

Private servers on free loopback ports only (rqsup.redis_topologies); never
the shared Redis. On a 2-core machine six Cluster nodes and two worker
processes share two cores: the Cluster cannot show its scale here, only its
cost per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rqsup import AsyncQueue, Queue
from rqsup.queue.connection import sync_client
from rqsup.redis_server import RedisServer
from rqsup.redis_topologies import LocalCluster, LocalSentinel
from rqsup.supervisor import Worker

PROCESSES = 2
SLOTS = 30


async def _noop(job: Any) -> Any:
    return None


def _worker_proc(url: str, queues: list[str], total: int, wait_replicas: int,
                 ready: Any, go: Any) -> None:
    async def main() -> None:
        each = max(1, SLOTS // len(queues))
        ws = [Worker(q, _noop, url=url, concurrency=each, wait_replicas=wait_replicas)
              for q in queues]
        ready.set()
        while not go.is_set():
            await asyncio.sleep(0.005)
        tasks = [asyncio.create_task(w.run()) for w in ws]
        probe = Queue(queues[0], url)
        parts = [Queue(q, connection=probe.client) for q in queues]
        while sum(p.counts()["completed"] for p in parts) < total:
            await asyncio.sleep(0.02)
        for w in ws:
            await w.close(5)
        await asyncio.gather(*tasks)
        probe.close()
    asyncio.run(main())


def _nodes(url: str) -> list[Any]:
    c: Any = sync_client(url)
    if hasattr(c, "get_primaries"):
        return [sync_client(f"redis://{n.host}:{n.port}") for n in c.get_primaries()]
    return [c]


def _redis_cost(clients: list[Any]) -> tuple[float, int]:
    cpu, calls = 0.0, 0
    for c in clients:
        info = c.info("cpu")
        cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        stats = c.info("commandstats")
        calls += sum(int(v["calls"]) for k, v in stats.items()
                     if k not in ("cmdstat_info",))
    return cpu, calls


def processing(url: str, queues: list[str], n: int, wait_replicas: int = 0) -> dict[str, float]:
    """Fill the queues (n jobs in all), then time PROCESSES worker processes
    draining them."""
    for q in queues:
        with Queue(q, url, default_job_options={"remove_on_complete": False}) as qq:
            qq.obliterate(force=True)
    per = n // len(queues)
    for q in queues:
        with Queue(q, url, default_job_options={"remove_on_complete": False}) as qq:
            for i in range(0, per, 1000):
                qq.add_bulk([("x", i + j) for j in range(min(1000, per - i))])
    total = per * len(queues)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(PROCESSES)]
    procs = [ctx.Process(target=_worker_proc, args=(url, queues, total, wait_replicas, r, go))
             for r in readies]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(60)
    nodes = _nodes(url)
    cpu0, calls0 = _redis_cost(nodes)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join(300)
    took = time.perf_counter() - t0
    cpu1, calls1 = _redis_cost(nodes)
    for c in nodes:
        c.close()
    return {"jobs_s": total / took, "redis_cpu_us_per_job": (cpu1 - cpu0) * 1e6 / total,
            "redis_calls_per_job": (calls1 - calls0) / total}


def request_response(url: str, calls: int = 200) -> dict[str, float]:
    name = f"rr-{os.getpid()}-{time.monotonic_ns()}"

    async def main() -> list[float]:
        w = Worker(name, _noop, url=url, concurrency=1)
        t = asyncio.create_task(w.run())
        q = AsyncQueue(name, url)
        for _ in range(5):
            await q.call("x", 1, timeout=10)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await q.call("x", 1, timeout=10)
            lat.append((time.perf_counter() - t0) * 1000)
        await w.close(5)
        await t
        await q.close()
        return sorted(lat)
    lat = asyncio.run(main())
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def single_adds(url: str, n: int, wait_replicas: int) -> dict[str, float]:
    with Queue(f"sa-{time.monotonic_ns()}", url, wait_replicas=wait_replicas) as q:
        t0 = time.perf_counter()
        for i in range(n):
            q.add("x", i)
        return {"adds_s": n / (time.perf_counter() - t0)}


def median_rows(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="jobs per processing run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--failover", action="store_true",
                    help="also run the failover runs (tests/failover.py) at --n jobs")
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": platform.platform(),
                                           "loadavg_start": os.getloadavg()}}
    single = RedisServer(unix_socket=False, appendonly=False).start()
    cluster = LocalCluster().start()
    sentinel = LocalSentinel().start()
    try:
        # Three queues whose slots are on three different primaries.
        c: Any = sync_client(cluster.url)
        spread: dict[int, str] = {}
        i = 0
        while len(spread) < 3:
            name = f"cq{i}"
            spread.setdefault(c.get_node_from_key(f"rqsup:{{{name}}}:wait").port, name)
            i += 1
        c.close()
        three = list(spread.values())
        su = f"redis://127.0.0.1:{single.port}"
        rows: dict[str, Callable[[], dict[str, float]]] = {
            "processing, 1 queue, one Redis": lambda: processing(su, ["one"], args.n),
            "processing, 1 queue x 3 partitions, one Redis":
                lambda: processing(su, ["part#0", "part#1", "part#2"], args.n),
            "processing, 3 queues, Cluster (one per primary)":
                lambda: processing(cluster.url, three, args.n),
            "processing, 1 queue x 3 partitions, Cluster":
                lambda: processing(cluster.url, ["part#0", "part#1", "part#2"], args.n),
            "processing, 1 queue, Sentinel primary, wait_replicas 0":
                lambda: processing(sentinel.url, ["w0"], args.n),
            "processing, 1 queue, Sentinel primary, wait_replicas 1":
                lambda: processing(sentinel.url, ["w1"], args.n, wait_replicas=1),
            "request/response, one Redis": lambda: request_response(su),
            "request/response, Cluster": lambda: request_response(cluster.url),
            "single add, Sentinel primary, wait_replicas 0":
                lambda: single_adds(sentinel.url, 2000, 0),
            "single add, Sentinel primary, wait_replicas 1":
                lambda: single_adds(sentinel.url, 2000, 1),
        }
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in rows}
        for _rep in range(args.reps):
            for name, fn in rows.items():
                runs[name].append(fn())
                print(f"  {name}: {runs[name][-1]}", flush=True)
        results["rows"] = {k: median_rows(v) for k, v in runs.items()}
    finally:
        sentinel.cleanup()
        cluster.cleanup()
        single.cleanup()
    if args.failover:
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.failover import Run  # the same harness as tests/test_failover.py

        with LocalCluster() as cl, tempfile.TemporaryDirectory() as d:
            run = Run(Path(d), cl.url, jobs=args.n)
            q = run.start()

            def holder() -> int:
                return int(q.client.get_node_from_key(q.core.keys.wait).port)  # type: ignore[attr-defined]
            run.fault_when(q, args.n // 5, "cluster-failover", lambda: cl.failover(holder()))
            run.fault_when(q, args.n // 2, "primary-kill", lambda: cl.kill_primary(holder()))
            run.finish(q, timeout_s=600)
            run.stop()
            results["failover_cluster"] = run.verdict(q)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Core throughput and latency benchmarks for rqsup, on a private redis-server.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_core.py            # unix socket, 3 runs
    .venv/bin/python benchmarks/bench_core.py --tcp      # TCP loopback
    .venv/bin/python benchmarks/bench_core.py --quick    # 1 run per row
    .venv/bin/python benchmarks/bench_core.py --json out.json

It never touches a shared Redis: it starts its own redis-server (no AOF) in a
temporary directory and removes it afterwards. See benchmarks/README.md for
what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from rqsup import Queue
from rqsup.queue.options import DEFAULT_KEEP_COMPLETED
from rqsup.redis_server import RedisServer
from rqsup.supervisor import Worker

SHARED_REDIS_PORT = 6379

BULK_JOBS = 20_000
SINGLE_ADDS = 5_000
NOOP_JOBS = 20_000
ASYNC_CONCURRENCIES = (50, 200)
THREAD_CONCURRENCY = 8
RR_WARMUP = 20
RR_CALLS = 200
PING_OPS = 5_000
EVALSHA_CALLS = 20_000
EVALSHA_PIPELINE = 500
HANDOFF_WARMUP = 20
HANDOFF_ROUNDS = 200
#: No single wait in a run may take longer than this (a hang is an error, not a result).
RUN_DEADLINE_S = 60.0
#: Closing an idle worker takes milliseconds; past this it is reported as hung.
CLOSE_DEADLINE_S = 15.0

log = logging.getLogger("bench")


# -- results -------------------------------------------------------------------


@dataclass
class Row:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.problems: list[str] = []

    def add(self, key: str, name: str, unit: str, value: float) -> None:
        self.rows.setdefault(key, Row(name, unit)).samples.append(value)

    def get(self, key: str) -> Row | None:
        return self.rows.get(key)


class WarningCollector(logging.Handler):
    """Keeps every WARNING+ log record, and every uncaught exception in a thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def install_thread_hook(self) -> None:
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            name = args.thread.name if args.thread is not None else "?"
            self.records.append(
                f"uncaught {args.exc_type.__name__} in thread {name!r}: {args.exc_value}"
            )
            previous(args)

        threading.excepthook = hook


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def fresh(q: Queue) -> None:
    q.obliterate(force=True)
    counts = q.counts()
    if any(counts.values()):
        raise RuntimeError(f"queue not empty after obliterate: {counts}")


def check_drained(q: Queue, res: Results, what: str, expect_completed: int) -> None:
    counts = q.counts()
    bad = {s: n for s, n in counts.items() if s != "completed" and n}
    if bad or counts["completed"] != expect_completed:
        res.problems.append(
            f"{what}: unexpected counts after the run: {counts} "
            f"(expected only completed={expect_completed})"
        )


# -- 1, 2: producing -------------------------------------------------------------


def bench_bulk_add(q: Queue, res: Results) -> None:
    fresh(q)
    jobs = [{"name": "n", "data": {"i": i}} for i in range(BULK_JOBS)]
    t0 = time.perf_counter()
    added = q.add_bulk(jobs)
    elapsed = time.perf_counter() - t0
    if len(added) != BULK_JOBS or q.counts()["wait"] != BULK_JOBS:
        res.problems.append(f"bulk add: {len(added)} returned, counts {q.counts()}")
    res.add("bulk_add", f"bulk add ({BULK_JOBS:,} jobs, add_bulk)", "jobs/s",
            BULK_JOBS / elapsed)


def bench_single_add(q: Queue, res: Results) -> None:
    fresh(q)
    q.add("warm", {"i": -1})  # loads the scripts and opens the connection
    fresh(q)
    t0 = time.perf_counter()
    for i in range(SINGLE_ADDS):
        q.add("n", {"i": i})
    elapsed = time.perf_counter() - t0
    if q.counts()["wait"] != SINGLE_ADDS:
        res.problems.append(f"single add: counts {q.counts()}")
    res.add("single_add", f"single add ({SINGLE_ADDS:,} sequential q.add)", "adds/s",
            SINGLE_ADDS / elapsed)
    res.add("single_add_us", "single add, per call", "µs", elapsed / SINGLE_ADDS * 1e6)


# -- 3, 4: no-op worker throughput ------------------------------------------------


async def _noop_async(job: Any) -> None:
    return None


def _noop_thread(job: Any) -> None:
    return None


async def _echo_async(job: Any) -> Any:
    return job.data


async def _close_worker(w: Worker, task: asyncio.Task[None]) -> None:
    await w.close()
    await task


async def _drain_with_worker(
    url: str, queue: str, mode: str, concurrency: int, n: int
) -> tuple[float, list[str]]:
    """Time one worker from its start until it processed ``n`` jobs; close it.

    Returns the time and notes about anything odd (a close that hung).
    """
    proc: Callable[[Any], Any] = _noop_async if mode == "async" else _noop_thread
    w = Worker(queue, proc, url=url, mode=mode, concurrency=concurrency)
    notes: list[str] = []
    t0 = time.perf_counter()
    task = asyncio.create_task(w.run())
    deadline = t0 + RUN_DEADLINE_S
    try:
        while w.processed < n:
            if task.done():
                task.result()  # raises what killed the worker
                raise RuntimeError(f"worker stopped after {w.processed}/{n} jobs")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{mode} worker: {w.processed}/{n} jobs in {RUN_DEADLINE_S}s")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
    finally:
        closing = asyncio.create_task(_close_worker(w, task))
        done, _ = await asyncio.wait([closing], timeout=CLOSE_DEADLINE_S)
        if not done:
            stuck = [
                f"{t.get_name()} ({'cancelling' if t.cancelling() else 'pending'})"
                for t in asyncio.all_tasks() if t.get_name().startswith("rqsup")
            ]
            notes.append(
                f"Worker.close() had not returned after {CLOSE_DEADLINE_S:g}s "
                f"(all {w.processed} jobs acknowledged); rqsup tasks left: {stuck}"
            )
            # asyncio.run's teardown cancels these tasks again, which ends them.
        elif closing.exception() is not None:
            notes.append(f"Worker.close() raised {closing.exception()!r}")
    if w.processed != n:
        raise RuntimeError(f"{mode} worker processed {w.processed}, expected {n}")
    return elapsed, notes


def bench_noop(q: Queue, url: str, res: Results, mode: str, concurrency: int) -> None:
    fresh(q)
    q.add_bulk([("n", {"i": i}) for i in range(NOOP_JOBS)])
    if q.counts()["wait"] != NOOP_JOBS:
        res.problems.append(f"{mode} no-op: preload gave {q.counts()}")
    elapsed, notes = asyncio.run(
        _drain_with_worker(url, q.name, mode, concurrency, NOOP_JOBS)
    )
    res.problems += [f"{mode} no-op c={concurrency}: {n}" for n in notes]
    # Default retention keeps the newest completed jobs only.
    kept = min(NOOP_JOBS, DEFAULT_KEEP_COMPLETED["count"])
    check_drained(q, res, f"{mode} no-op c={concurrency}", kept)
    res.add(f"{mode}_noop_c{concurrency}",
            f"{mode} no-op ({NOOP_JOBS:,} jobs, 1 worker, concurrency {concurrency})",
            "jobs/s", NOOP_JOBS / elapsed)


# -- 5: request/response ----------------------------------------------------------


def _rr_worker_main(url: str, queue: str, ready: Any, stop: Any, report: Any) -> None:
    """A worker process: one async Worker (concurrency 1) until ``stop`` is set.

    Sends the WARNING+ log lines it saw through ``report`` when it ends.
    """
    logging.basicConfig(level=logging.WARNING,
                        format="[rr worker %(process)d] %(levelname)s %(name)s: %(message)s")
    collector = WarningCollector()
    logging.getLogger().addHandler(collector)

    async def main() -> None:
        w = Worker(queue, _echo_async, url=url, mode="async", concurrency=1)
        task = asyncio.create_task(w.run())
        ready.set()
        stopper = asyncio.get_running_loop().run_in_executor(None, stop.wait)
        done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        await w.close()
        await task

    try:
        asyncio.run(main())
    finally:
        report.put(collector.records)


def bench_request_response(url: str, res: Results, keep: list[Queue]) -> None:
    """One run: a new queue name each run (see below), a new worker process."""
    # rqsup's event reader remembers recent outcomes by job id for the whole
    # process, and an obliterated queue numbers its jobs from 1 again: reusing
    # the queue name would let q.call() return a previous run's result at once.
    # The Queue objects are kept open until the end for the same reason (the
    # reader is keyed by id() of the connection pool).
    q = Queue(f"bench-rr-{len(keep) + 1}", url)
    keep.append(q)
    fresh(q)
    nonce = os.urandom(4).hex()
    ctx = mp.get_context("spawn")
    ready, stop, report = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    p = ctx.Process(target=_rr_worker_main, args=(url, q.name, ready, stop, report),
                    daemon=True)
    p.start()
    wrong = 0
    try:
        if not ready.wait(30):
            raise RuntimeError("request/response worker process did not start")
        for i in range(RR_WARMUP):
            q.call("rr", {"n": nonce, "i": -1 - i}, timeout=5)
        lat: list[float] = []
        for i in range(RR_CALLS):
            data = {"n": nonce, "i": i}
            t0 = time.perf_counter()
            out = q.call("rr", data, timeout=5)
            lat.append(time.perf_counter() - t0)
            wrong += out != data
    finally:
        stop.set()
        p.join(CLOSE_DEADLINE_S)
        if p.is_alive():
            res.problems.append(
                f"request/response: worker process had not stopped {CLOSE_DEADLINE_S:g}s after "
                "it was asked to (Worker.close() hung?); killed it"
            )
            p.kill()
            p.join()
    if wrong:
        res.problems.append(f"request/response: {wrong}/{RR_CALLS} calls returned another "
                            "job's result")
    if p.exitcode != 0:
        res.problems.append(f"request/response: worker process exited with {p.exitcode}")
    while not report.empty():
        res.problems += [f"request/response worker log: {ln}" for ln in report.get()]
    check_drained(q, res, "request/response", RR_WARMUP + RR_CALLS)
    name = f"request/response ({RR_CALLS} sync q.call, worker in another process)"
    res.add("rr_p50", f"{name} p50", "ms", percentile(lat, 50) * 1e3)
    res.add("rr_p99", f"{name} p99", "ms", percentile(lat, 99) * 1e3)


# -- 6: raw redis-py baselines -------------------------------------------------------


def bench_ping(url: str, res: Results) -> None:
    r = redis.Redis.from_url(url)
    try:
        r.ping()
        t0 = time.perf_counter()
        for _ in range(PING_OPS):
            r.ping()
        elapsed = time.perf_counter() - t0
    finally:
        r.close()
    res.add("ping", f"baseline: {PING_OPS:,} sequential PING (redis-py)", "ops/s",
            PING_OPS / elapsed)
    res.add("ping_us", "baseline: PING round trip", "µs", elapsed / PING_OPS * 1e6)


def bench_evalsha(url: str, res: Results) -> None:
    r = redis.Redis.from_url(url)
    try:
        sha = r.script_load("return 1")
        t0 = time.perf_counter()
        done = 0
        while done < EVALSHA_CALLS:
            pipe = r.pipeline(transaction=False)
            for _ in range(EVALSHA_PIPELINE):
                pipe.execute_command("EVALSHA", sha, 0)
            replies = pipe.execute()
            if replies[-1] != 1:
                raise RuntimeError(f"EVALSHA replied {replies[-1]!r}")
            done += EVALSHA_PIPELINE
        elapsed = time.perf_counter() - t0
    finally:
        r.close()
    res.add("evalsha", f"baseline: EVALSHA 'return 1', pipelines of {EVALSHA_PIPELINE}",
            "calls/s", EVALSHA_CALLS / elapsed)


def _pong_main(url: str, ping_key: str, pong_key: str) -> None:
    r = redis.Redis.from_url(url)
    while True:
        item = r.brpop([ping_key], timeout=0)
        if item is None or item[1] == b"stop":
            return
        r.lpush(pong_key, item[1])


def bench_handoff(url: str, res: Results) -> None:
    ping_key, pong_key = "bench:handoff:ping", "bench:handoff:pong"
    r = redis.Redis.from_url(url)
    r.delete(ping_key, pong_key)
    p = mp.get_context("spawn").Process(target=_pong_main, args=(url, ping_key, pong_key),
                                        daemon=True)
    p.start()
    lat: list[float] = []
    try:
        for i in range(HANDOFF_WARMUP + HANDOFF_ROUNDS):
            t0 = time.perf_counter()
            r.lpush(ping_key, i)
            reply = r.brpop([pong_key], timeout=10)
            if reply is None:
                raise TimeoutError("LPUSH/BRPOP ping-pong: no answer within 10s")
            if i >= HANDOFF_WARMUP:
                lat.append(time.perf_counter() - t0)
    finally:
        r.lpush(ping_key, "stop")
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
        r.delete(ping_key, pong_key)
        r.close()
    name = f"baseline: LPUSH+BRPOP ping-pong, 2 processes ({HANDOFF_ROUNDS} rounds)"
    res.add("handoff_p50", f"{name} p50", "ms", percentile(lat, 50) * 1e3)
    res.add("handoff_p99", f"{name} p99", "ms", percentile(lat, 99) * 1e3)


# -- report ----------------------------------------------------------------------------


def rqsup_source() -> str:
    """The rqsup commit measured, and any uncommitted changes to it."""
    import rqsup

    repo = Path(rqsup.__file__).resolve().parent.parent
    git = ["git", "--no-optional-locks", "-C", str(repo)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", "rqsup"],
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return f"rqsup {rqsup.__version__}"
    if not head:
        return f"rqsup {rqsup.__version__}"
    dirty = [ln[3:] for ln in status.splitlines() if ln.strip()]
    note = f" + uncommitted changes to {', '.join(dirty)}" if dirty else ""
    return f"rqsup {rqsup.__version__} @ {head}{note}"


def machine_info(url: str, transport: str) -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    r = redis.Redis.from_url(url)
    try:
        redis_version = r.info("server")["redis_version"]
    finally:
        r.close()
    return {
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "redis_server": redis_version,
        "redis_py": redis.__version__,
        "transport": transport,
        "rqsup": rqsup_source(),
    }


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def targets(res: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(what: str, row: Row | None, op: str, goal: float, unit: str,
              extra: str = "") -> None:
        if row is None:
            out.append({"target": what, "goal": f"{op} {goal:g} {unit}", "result": None,
                        "met": None, "note": "not measured"})
            return
        met = row.median >= goal if op == ">=" else row.median <= goal
        out.append({"target": what, "goal": f"{op} {goal:g} {unit}", "result": row.median,
                    "met": met, "note": extra,
                    "ratio": row.median / goal})

    check("bulk add", res.get("bulk_add"), ">=", 50_000, "jobs/s")
    asyncs = [(c, res.get(f"async_noop_c{c}")) for c in ASYNC_CONCURRENCIES]
    asyncs = [(c, r) for c, r in asyncs if r is not None]
    best = max(asyncs, key=lambda cr: cr[1].median) if asyncs else (None, None)
    check("async no-op, one worker process", best[1], ">=", 15_000, "jobs/s",
          f"best concurrency {best[0]}" if best[0] else "")
    check("request/response p50", res.get("rr_p50"), "<=", 0.7, "ms")
    check("request/response p99", res.get("rr_p99"), "<=", 2.0, "ms")
    return out


def write_json(path: str, info: dict[str, Any], runs: int, res: Results,
               tg: list[dict[str, Any]], total_s: float, **extra: Any) -> None:
    """The report as JSON (shared by the benchmark scripts)."""
    doc = {
        "machine": info,
        "runs": runs,
        **extra,
        "results": [
            {"key": k, **asdict(r), "median": r.median, "min": r.min, "max": r.max}
            for k, r in res.rows.items()
        ],
        "targets": tg,
        "problems": res.problems,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_s": total_s,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)


def print_table(res: Results) -> None:
    """The rows as a table: name, median, min, max, unit (shared by the scripts)."""
    headers = ("benchmark", "median", "min", "max", "unit")
    table = [(r.name, fmt(r.median), fmt(r.min), fmt(r.max), r.unit) for r in res.rows.values()]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(headers)]
    align = ("<", ">", ">", ">", "<")

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

    print(line(headers))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(line(t))


def print_targets(tg: list[dict[str, Any]], width: int = 34) -> None:
    print()
    print("targets (median vs goal):")
    for t in tg:
        if t["met"] is None:
            print(f"  {t['target']:<{width}} goal {t['goal']:<16} not measured")
            continue
        verdict = "MET" if t["met"] else "MISSED"
        note = f"; {t['note']}" if t["note"] else ""
        print(f"  {t['target']:<{width}} goal {t['goal']:<16} got {fmt(t['result']):>8}  "
              f"{verdict} ({t['ratio']:.2f}x of goal{note})")


def print_report(info: dict[str, Any], runs: int, res: Results, tg: list[dict[str, Any]],
                 warnings: list[str], env_notes: list[str], total_s: float) -> None:
    print()
    print(f"rqsup bench_core: {info['cores']} cores, {info['cpu_model']}, "
          f"Python {info['python']}, redis-server {info['redis_server']}, "
          f"redis-py {info['redis_py']}, transport: {info['transport']}, "
          f"runs per row: {runs}")
    print(f"measured: {info['rqsup']}")
    print(f"load average at start {info['load_avg_at_start']}, at end "
          f"{[round(x, 2) for x in os.getloadavg()]} (other processes skew the figures)")
    print_table(res)
    print_targets(tg)
    if res.problems or warnings:
        print()
        print("problems seen during the run:")
        for p in res.problems:
            print(f"  - {p}")
        for w in warnings:
            print(f"  - log: {w}")
    if env_notes:
        print()
        print("environment (redis-server log warnings, not rqsup's):")
        for n in env_notes:
            print(f"  - {n}")
    print(f"\ntotal time {total_s:.1f}s")


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tcp", action="store_true", help="TCP loopback instead of a unix socket")
    ap.add_argument("--quick", action="store_true", help="1 run per row instead of 3")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--no-handoff", action="store_true",
                    help="skip the LPUSH/BRPOP cross-process baseline")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else 3
    # A SIGTERM still runs the finally below, so the private redis-server goes too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    collector = WarningCollector()
    logging.getLogger().addHandler(collector)
    collector.install_thread_hook()

    started = time.perf_counter()
    data_dir = tempfile.mkdtemp(prefix="rqsup-bench-")
    srv = RedisServer(data_dir, unix_socket=not args.tcp, appendonly=False)
    if not srv.socket_path and srv.port == SHARED_REDIS_PORT:
        raise SystemExit("refusing to use port 6379 (the shared Redis)")
    transport = "tcp 127.0.0.1" if args.tcp else "unix socket"
    srv.start()
    res = Results()
    q: Queue | None = None
    rr_queues: list[Queue] = []
    try:
        url = srv.url
        info = machine_info(url, transport)
        q = Queue("bench", url)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("bulk add", lambda: bench_bulk_add(q, res)),
            ("single add", lambda: bench_single_add(q, res)),
        ]
        steps += [
            (f"async no-op c={c}", lambda c=c: bench_noop(q, url, res, "async", c))
            for c in ASYNC_CONCURRENCIES
        ]
        steps += [
            ("thread no-op", lambda: bench_noop(q, url, res, "thread", THREAD_CONCURRENCY)),
            ("request/response", lambda: bench_request_response(url, res, rr_queues)),
            ("PING", lambda: bench_ping(url, res)),
            ("EVALSHA", lambda: bench_evalsha(url, res)),
        ]
        if not args.no_handoff:
            steps.append(("LPUSH/BRPOP handoff", lambda: bench_handoff(url, res)))
        for label, step in steps:
            for i in range(runs):
                t0 = time.perf_counter()
                try:
                    step()
                except Exception as exc:
                    log.exception("%s run %d failed", label, i + 1)
                    res.problems.append(f"{label} run {i + 1}: {type(exc).__name__}: {exc}")
                print(f"  {label}: run {i + 1}/{runs} done in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr, flush=True)
    finally:
        measured = len(collector.records)
        for rq in [q, *rr_queues]:
            if rq is not None:
                with contextlib.suppress(Exception):
                    rq.obliterate(force=True)
                rq.close()
        log_tail = srv._log_tail()
        srv.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)

    # redis-server marks warnings with "#"; start-up banners use it too.
    server_warnings = [ln.split(" # ", 1)[1] for ln in log_tail.splitlines()
                       if " # " in ln and "WARNING" in ln]
    env = [w for w in server_warnings if "overcommit" in w or "Transparent Huge Pages" in w]
    env_notes = [w[:150] + ("..." if len(w) > 150 else "") for w in env]
    # Let a background thread (the event reader of q.call) hit the stopped server.
    time.sleep(1.5)
    late = collector.records[measured:]
    warnings = collector.records[:measured]
    if late:
        more = f" (+{len(late) - 1} more lines, see --json)" if len(late) > 1 else ""
        warnings.append(f"after the measurements, at shutdown: {late[0]}{more}")
    warnings += [f"redis-server: {w}" for w in server_warnings if w not in env]
    tg = targets(res)
    total_s = time.perf_counter() - started
    print_report(info, runs, res, tg, warnings, env_notes, total_s)
    if args.json:
        write_json(args.json, info, runs, res, tg, total_s, warnings=warnings,
                   shutdown_log=late, environment_notes=env_notes)
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())

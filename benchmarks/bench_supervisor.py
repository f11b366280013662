#!/usr/bin/env python3
"""Process-mode benchmarks for rqsup's supervisor, on a private redis-server.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/bench_supervisor.py            # 3 runs per row
    .venv/bin/python benchmarks/bench_supervisor.py --quick    # 1 run per row
    .venv/bin/python benchmarks/bench_supervisor.py --json out.json
    .venv/bin/python benchmarks/bench_supervisor.py --only noop,restart

It never touches a shared Redis: it starts its own redis-server (no AOF) in a
temporary directory and removes it afterwards. Workers run in spawned
processes of their own, so the benchmark process never shares their CPU; the
processors are in benchmarks/bench_procs.py. See benchmarks/README.md for
what each row measures.
"""

from __future__ import annotations

# Only light imports at the top: under a multiprocessing forkserver every
# child of a pool imports the launching program's __main__ again (see the
# README), and the worker processes here are spawned from this script. The
# heavy ones (asyncio, redis, rqsup, psutil) are imported where they are used.
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess
    from multiprocessing.connection import Connection
    from pathlib import Path

    from bench_core import Results, Row

    from rqsup import Queue

SHARED_REDIS_PORT = 6379
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The processors, as the children import them (the repository root on their path).
PROCS = "benchmarks.bench_procs"

NOOP_JOBS = 20_000
NOOP_CONCURRENCY = 2
CPU_JOBS = 40
CPU_JOB_S = 0.05
DISPATCH_JOBS = 3_000
RECYCLE_JOBS = 100
BOOT_CHILDREN = 30
LAG_JOBS = 4  # two per child, back to back
LAG_JOB_S = 2.5
LAG_TICK_S = 0.01
RESTART_JOB_S = 1.0
#: No single wait in a run may take longer than this (a hang is an error, not a result).
RUN_DEADLINE_S = 60.0
#: Closing an idle worker takes milliseconds; past this it is reported as hung.
CLOSE_DEADLINE_S = 15.0
#: Log lines the restart run causes on purpose.
EXPECTED_SUPERVISOR_WARNINGS = ("left active by a previous run",)

STEPS = ("noop", "cpu", "dispatch", "boot", "lag", "restart")

log = logging.getLogger("bench")


# -- a worker in a spawned process --------------------------------------------------


def _worker_proc(spec: dict[str, Any], conn: Connection) -> None:
    """A spawned process: one Worker runs ``spec["n"]`` jobs; the figures go to ``conn``."""
    import asyncio

    from bench_core import WarningCollector

    logging.basicConfig(level=logging.WARNING,
                        format="[worker %(process)d] %(levelname)s %(name)s: %(message)s")
    collector = WarningCollector()
    logging.getLogger().addHandler(collector)
    collector.install_thread_hook()
    try:
        out = asyncio.run(_worker_run(spec))
    except BaseException as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["warnings"] = collector.records
    conn.send(out)
    conn.close()


async def _lag_sampler(out: list[float]) -> None:
    """How late a 10 ms timer fires, each time (seconds)."""
    import asyncio

    while True:
        before = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        out.append(max(0.0, time.perf_counter() - before - LAG_TICK_S))


async def _worker_run(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from rqsup.supervisor import Worker
    from rqsup.supervisor.health import LagMonitor
    from rqsup.supervisor.pool import SandboxSettings

    mode = spec["mode"]
    n = spec["n"]
    kw: dict[str, Any] = {}
    if mode == "process":
        kw["sandbox"] = SandboxSettings(**spec.get("sandbox", {}))
    w = Worker(spec["queue"], spec["processor"], url=spec["url"], mode=mode,
               concurrency=spec["concurrency"], prefetch=spec.get("prefetch"), **kw)
    t_prep = time.perf_counter()
    await w.prepare()  # process mode: the forkserver starts and the children boot
    prepare_s = time.perf_counter() - t_prep

    done = asyncio.Event()
    acked = w.on_acked

    def on_acked(*args: Any) -> None:  # the exact moment the last outcome is recorded
        acked(*args)
        if w.processed >= n:
            done.set()

    w.on_acked = on_acked  # type: ignore[assignment]
    lag: list[float] = []
    monitor = LagMonitor()
    samplers = []
    if spec.get("lag"):
        samplers = [asyncio.create_task(_lag_sampler(lag)), asyncio.create_task(monitor.run())]
    notes: list[str] = []
    t0 = time.perf_counter()
    task = asyncio.create_task(w.run())
    finished = asyncio.create_task(done.wait())
    try:
        await asyncio.wait([task, finished], timeout=RUN_DEADLINE_S,
                           return_when=asyncio.FIRST_COMPLETED)
        elapsed = time.perf_counter() - t0
        if not done.is_set():
            if task.done():
                task.result()  # raises what killed the worker
                raise RuntimeError(f"worker stopped after {w.processed}/{n} jobs")
            raise TimeoutError(f"{mode} worker: {w.processed}/{n} jobs in {RUN_DEADLINE_S:g}s")
    finally:
        finished.cancel()
        for s in samplers:
            s.cancel()
        closing = asyncio.create_task(w.close())
        closed, _ = await asyncio.wait([closing], timeout=CLOSE_DEADLINE_S)
        if not closed:
            notes.append(f"Worker.close() had not returned after {CLOSE_DEADLINE_S:g}s")
        elif closing.exception() is not None:
            notes.append(f"Worker.close() raised {closing.exception()!r}")
        elif task.done() and not task.cancelled() and task.exception() is not None:
            notes.append(f"Worker.run() raised {task.exception()!r}")
    return {
        "elapsed": elapsed, "processed": w.processed, "prepare_s": prepare_s,
        "lag": lag, "lagmon_p99_ms": monitor.p99_ms(), "lagmon_n": len(monitor.samples),
        "notes": notes,
    }


def run_worker(spec: dict[str, Any], res: Results, what: str) -> dict[str, Any]:
    """Run ``_worker_proc`` in a spawned process; its result, or raise."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    # Not a daemon: a daemonic process may not start the children of a pool.
    p = ctx.Process(target=_worker_proc, args=(spec, send), name=f"bench worker {what}")
    p.start()
    send.close()
    answered = False
    try:
        if not recv.poll(RUN_DEADLINE_S + 2 * CLOSE_DEADLINE_S + 30):
            raise TimeoutError(f"{what}: worker process sent nothing")
        out: dict[str, Any] = recv.recv()
        answered = True
    finally:
        if not answered:  # a hang, or we are stopping: its children die with it
            p.kill()
        p.join(CLOSE_DEADLINE_S)
        if p.is_alive():
            res.problems.append(f"{what}: worker process had not exited; killed it")
            p.kill()
            p.join()
        recv.close()
    if p.exitcode != 0:
        res.problems.append(f"{what}: worker process exited with {p.exitcode}")
    res.problems += [f"{what}: {n}" for n in out.get("notes", [])]
    res.problems += [f"{what}: worker log: {ln}" for ln in out.get("warnings", [])]
    if "error" in out:
        raise RuntimeError(out["error"])
    if out["processed"] != spec["n"]:
        raise RuntimeError(f"processed {out['processed']}, expected {spec['n']}")
    return out


def _spec(url: str, q: Queue, processor: str, mode: str, concurrency: int, n: int,
          **extra: Any) -> dict[str, Any]:
    return {"url": url, "queue": q.name, "processor": processor, "mode": mode,
            "concurrency": concurrency, "n": n, **extra}


def _kept(n: int) -> int:
    from rqsup.queue.options import DEFAULT_KEEP_COMPLETED

    return min(n, DEFAULT_KEEP_COMPLETED["count"])


# -- 1: process-mode no-op throughput --------------------------------------------------


def bench_noop(q: Queue, url: str, res: Results, prefetch: int | None) -> None:
    from bench_core import check_drained, fresh

    fresh(q)
    q.add_bulk([("n", {"i": i}) for i in range(NOOP_JOBS)])
    label = "default" if prefetch is None else str(prefetch)
    what = f"process no-op prefetch={label}"
    out = run_worker(_spec(url, q, f"{PROCS}:noop", "process", NOOP_CONCURRENCY, NOOP_JOBS,
                           prefetch=prefetch), res, what)
    check_drained(q, res, what, _kept(NOOP_JOBS))
    shown = "adaptive = default" if prefetch is None else str(prefetch)
    res.add(f"noop_p{label}",
            f"process no-op ({NOOP_JOBS:,} jobs, {NOOP_CONCURRENCY} children, "
            f"prefetch {shown})", "jobs/s", NOOP_JOBS / out["elapsed"])
    if prefetch is None:
        res.add("prepare", f"worker.prepare(): forkserver + {NOOP_CONCURRENCY} children boot",
                "ms", out["prepare_s"] * 1e3)


# -- 2: CPU-bound scaling ----------------------------------------------------------------


def calibrate(seconds: float) -> int:
    """Loop count of ``bench_procs.burn`` that takes ``seconds`` here (best of 5)."""
    from bench_procs import burn

    probe = 200_000
    burn(probe)  # warm up
    best = min(_timed(burn, probe) for _ in range(5))
    return max(1, round(probe * seconds / best))


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def bench_cpu(q: Queue, url: str, res: Results, loops: int) -> None:
    from bench_core import check_drained, fresh

    rates: dict[str, float] = {}
    for key, mode, conc, label in (("p1", "process", 1, "process, 1 child"),
                                   ("p2", "process", 2, "process, 2 children"),
                                   ("t2", "thread", 2, "thread, 2 threads")):
        fresh(q)
        q.add_bulk([("cpu", {"loops": loops}) for _ in range(CPU_JOBS)])
        what = f"cpu {label}"
        out = run_worker(_spec(url, q, f"{PROCS}:cpu", mode, conc, CPU_JOBS), res, what)
        check_drained(q, res, what, CPU_JOBS)
        rates[key] = CPU_JOBS / out["elapsed"]
        res.add(f"cpu_{key}", f"cpu {CPU_JOB_S * 1e3:.0f} ms jobs ({CPU_JOBS}), {label}",
                "jobs/s", rates[key])
        if key == "p1":
            res.add("cpu_job_ms", "cpu job as run by 1 child (time per job)", "ms",
                    out["elapsed"] / CPU_JOBS * 1e3)
    res.add("cpu_scale", "cpu scaling: 2 children / 1 child", "x", rates["p2"] / rates["p1"])
    res.add("cpu_vs_thread", "cpu: process x2 / thread x2", "x", rates["p2"] / rates["t2"])


# -- 3: dispatch overhead, and recycling end to end -------------------------------------


def bench_dispatch(q: Queue, url: str, res: Results) -> None:
    from bench_core import check_drained, fresh

    per_job: dict[str, float] = {}
    for mode, proc in (("process", f"{PROCS}:noop"), ("async", f"{PROCS}:noop_async")):
        fresh(q)
        q.add_bulk([("n", {"i": i}) for i in range(DISPATCH_JOBS)])
        what = f"dispatch {mode} c=1"
        out = run_worker(_spec(url, q, proc, mode, 1, DISPATCH_JOBS), res, what)
        check_drained(q, res, what, _kept(DISPATCH_JOBS))
        per_job[mode] = out["elapsed"] / DISPATCH_JOBS * 1e6
        res.add(f"dispatch_{mode}", f"{mode} no-op, concurrency 1 ({DISPATCH_JOBS:,} jobs), "
                "per job", "µs", per_job[mode])
    res.add("dispatch_overhead", "dispatch overhead: process - async, per job", "µs",
            per_job["process"] - per_job["async"])

    fresh(q)
    q.add_bulk([("n", {"i": i}) for i in range(RECYCLE_JOBS)])
    what = "recycle max_jobs_per_child=1"
    out = run_worker(_spec(url, q, f"{PROCS}:noop", "process", 1, RECYCLE_JOBS,
                           sandbox={"max_jobs_per_child": 1}), res, what)
    check_drained(q, res, what, _kept(RECYCLE_JOBS))
    recycled_ms = out["elapsed"] / RECYCLE_JOBS * 1e3
    res.add("recycle_job", f"process no-op, c=1, max_jobs_per_child=1 ({RECYCLE_JOBS} jobs), "
            "per job", "ms", recycled_ms)
    res.add("recycle_cost", "recycle cost per job (that - pooled c=1)", "ms",
            recycled_ms - per_job["process"] / 1e3)


# -- 4: child boot and recycle, directly ----------------------------------------------------


def _boot_proc(n: int, conn: Connection) -> None:
    import asyncio

    from bench_core import WarningCollector

    logging.basicConfig(level=logging.WARNING,
                        format="[boot %(process)d] %(levelname)s %(name)s: %(message)s")
    collector = WarningCollector()
    logging.getLogger().addHandler(collector)
    try:
        out = asyncio.run(_boot_run(n))
    except BaseException as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["warnings"] = collector.records
    conn.send(out)
    conn.close()


async def _boot_run(n: int) -> dict[str, Any]:
    """Boot one child (cold: the forkserver starts too), then ``n`` times: stop the
    idle child, boot its replacement (what the pool does on recycle)."""
    from rqsup.sandbox.runtime import ChildSpec
    from rqsup.supervisor.child_handle import Child
    from rqsup.supervisor.pool import SandboxSettings, forkserver_context

    settings = SandboxSettings()
    ctx = forkserver_context([PROCS])
    alive_r, alive_w = mp.Pipe(duplex=False)

    def spec(slot: int) -> ChildSpec:
        return ChildSpec(queue="bench-boot", slot=slot, processor=f"{PROCS}:noop",
                         nice=settings.nice)

    async def boot(slot: int) -> Child:
        child = Child("bench-boot", slot, 0)
        await child.boot(ctx, spec(slot), alive_r, settings.boot_timeout_s)
        return child

    t0 = time.perf_counter()
    child = await boot(0)
    cold = time.perf_counter() - t0
    boots: list[float] = []
    stops: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await child.stop(settings.kill_grace_s)
            t1 = time.perf_counter()
            child = await boot(i + 1)
            t2 = time.perf_counter()
            stops.append(t1 - t0)
            boots.append(t2 - t1)
    finally:
        await child.stop(settings.kill_grace_s)
        alive_w.close()
        alive_r.close()
    return {"cold": cold, "boots": boots, "stops": stops}


def bench_boot(res: Results) -> None:
    from bench_core import percentile

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_boot_proc, args=(BOOT_CHILDREN, send), name="bench boot")
    p.start()
    send.close()
    answered = False
    try:
        if not recv.poll(RUN_DEADLINE_S):
            raise TimeoutError("child boot: helper process sent nothing")
        out: dict[str, Any] = recv.recv()
        answered = True
    finally:
        if not answered:
            p.kill()
        p.join(CLOSE_DEADLINE_S)
        if p.is_alive():
            res.problems.append("child boot: helper process had not exited; killed it")
            p.kill()
            p.join()
        recv.close()
    res.problems += [f"child boot: helper log: {ln}" for ln in out.get("warnings", [])]
    if "error" in out:
        raise RuntimeError(out["error"])
    boots = [b * 1e3 for b in out["boots"]]
    recycles = [(b + s) * 1e3 for b, s in zip(out["boots"], out["stops"], strict=True)]
    res.add("boot_cold", "child boot, cold (forkserver start + first child)", "ms",
            out["cold"] * 1e3)
    res.add("boot_p50", f"child boot ({BOOT_CHILDREN} one after another) p50", "ms",
            percentile(boots, 50))
    res.add("boot_p99", f"child boot ({BOOT_CHILDREN} one after another) p99", "ms",
            percentile(boots, 99))
    res.add("stop_p50", "idle child stop (Child.stop) p50", "ms",
            percentile([s * 1e3 for s in out["stops"]], 50))
    res.add("recycle_p50", "recycle: stop idle child + boot replacement p50", "ms",
            percentile(recycles, 50))
    res.add("recycle_p99", "recycle: stop idle child + boot replacement p99", "ms",
            percentile(recycles, 99))


# -- 5: event-loop lag while the children burn CPU ------------------------------------------


def bench_lag(q: Queue, url: str, res: Results, loops_50ms: int) -> None:
    from bench_core import check_drained, fresh, percentile

    fresh(q)
    loops = round(loops_50ms * LAG_JOB_S / CPU_JOB_S)
    q.add_bulk([("cpu", {"loops": loops}) for _ in range(LAG_JOBS)])
    what = "loop lag"
    out = run_worker(_spec(url, q, f"{PROCS}:cpu", "process", 2, LAG_JOBS, lag=True),
                     res, what)
    check_drained(q, res, what, LAG_JOBS)
    lag_ms = [x * 1e3 for x in out["lag"]]
    name = f"loop lag, 2 children busy ({LAG_JOBS} x {LAG_JOB_S:g} s jobs), " \
           f"{LAG_TICK_S * 1e3:.0f} ms timer"
    res.add("lag_p99", f"{name} p99", "ms", percentile(lag_ms, 99))
    res.add("lag_max", f"{name} max", "ms", max(lag_ms))
    res.add("lagmon_p99", f"loop lag, same run, LagMonitor.p99_ms() "
            f"({out['lagmon_n']} samples of 50 ms)", "ms", out["lagmon_p99_ms"])


# -- 6, 7: restart recovery of the real supervisor, and its memory ----------------------------


def _rqsup_bin() -> str:
    from pathlib import Path

    path = Path(sys.executable).parent / "rqsup"
    if not path.exists():
        raise RuntimeError(f"{path} not found: install the project (pip install -e .)")
    return str(path)


def _wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(poll)


def _file_has(path: Path, text: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except OSError:
            return False

    return check


def _marks(mark_dir: Path) -> dict[str, list[tuple[float, int]]]:
    """job id -> [(start time (monotonic), pid)] from the marker files of sleep_s."""
    out: dict[str, list[tuple[float, int]]] = {}
    for f in mark_dir.iterdir():
        if f.name.endswith(".tmp"):
            continue
        job_id, _, pid = f.name.rpartition("-")
        with contextlib.suppress(OSError, ValueError):
            out.setdefault(job_id, []).append((float(f.read_text()), int(pid)))
    return out


def _memory(sup_pid: int) -> dict[str, Any]:
    import psutil

    sup = psutil.Process(sup_pid)
    info: dict[str, Any] = {"supervisor_rss": sup.memory_info().rss, "children": [],
                            "forkserver_rss": None}
    for p in sup.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "rqsup: child" in cmd:
                mem = p.memory_full_info()
                info["children"].append({"rss": mem.rss, "uss": mem.uss, "title": cmd})
            elif "forkserver" in cmd:
                info["forkserver_rss"] = p.memory_info().rss
    return info


def _stop_process(p: subprocess.Popen[bytes], timeout: float) -> int | None:
    import subprocess

    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None
    return p.returncode


def _log_problems(path: Path, who: str) -> list[str]:
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [f"{who}: no log"]
    for ln in lines:
        if (" WARNING " in ln or " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln) \
                and not any(e in ln for e in EXPECTED_SUPERVISOR_WARNINGS):
            out.append(f"{who} log: {ln.strip()[:300]}")
    return out


class Supervisors:
    """Every `rqsup start` process this benchmark started, so that a failure or a
    SIGTERM never leaves one behind."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
        import subprocess

        env = dict(os.environ)
        with open(log_path, "wb") as logf:
            p = subprocess.Popen([_rqsup_bin(), "start", str(config)], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=logf)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                _stop_process(p, CLOSE_DEADLINE_S)
        self.procs = [p for p in self.procs if p.poll() is None]


def bench_restart(q: Queue, url: str, res: Results, tmp: Path, sups: Supervisors,
                  run: int) -> None:
    try:
        _restart_run(q, url, res, tmp, sups, run)
    finally:
        # A failed run must not leave its supervisor holding the name for the next.
        sups.stop_all()


def _restart_run(q: Queue, url: str, res: Results, tmp: Path, sups: Supervisors,
                 run: int) -> None:
    import re

    import psutil
    from bench_core import check_drained, fresh

    fresh(q)
    work = tmp / f"restart-{run}"
    mark_dir = work / "marks"
    mark_dir.mkdir(parents=True)
    config = work / "supervisor.toml"
    config.write_text(
        "[redis]\n"
        f'url = "{url}"\n'
        "\n[supervisor]\n"
        'name = "bench-restart"\n'
        'lease = "60s"\n'
        'shutdown_grace = "10s"\n'
        'log_level = "debug"\n'  # the pool logs each child's boot time at debug
        "\n[[queues]]\n"
        f'name = "{q.name}"\n'
        f'processor = "{PROCS}:sleep_s"\n'
        'mode = "process"\n'
        "concurrency = 2\n"
        # Recycled after their job: the new supervisor's log then also gives
        # the boot time of a child from a running forkserver.
        "\n[queues.sandbox]\n"
        "max_jobs_per_child = 1\n"
    )
    log1, log2 = work / "first.log", work / "second.log"
    ready = "supervisor bench-restart ready"

    t0 = time.monotonic()
    first = sups.start(config, log1)
    _wait_for(lambda: first.poll() is not None or _file_has(log1, ready)(), 30,
              "first supervisor ready")
    if first.poll() is not None:
        raise RuntimeError(f"supervisor exited with {first.returncode}: "
                           f"{log1.read_text(errors='replace')[-500:]}")
    res.add("sup_ready", "rqsup start -> ready (2 children booted)", "ms",
            (time.monotonic() - t0) * 1e3)

    # 7: memory, with both children booted and idle.
    time.sleep(0.3)
    mem = _memory(first.pid)
    if len(mem["children"]) != 2:
        res.problems.append(f"restart run {run}: expected 2 children, found "
                            f"{[c['title'] for c in mem['children']]}")
    if mem["children"]:
        kids = mem["children"]
        res.add("rss_sup", "supervisor RSS, 2 idle children booted", "MiB",
                mem["supervisor_rss"] / 2**20)
        res.add("rss_child", "idle child RSS (mean of the children)", "MiB",
                sum(c["rss"] for c in kids) / len(kids) / 2**20)
        res.add("uss_child", "idle child USS (memory only it holds)", "MiB",
                sum(c["uss"] for c in kids) / len(kids) / 2**20)
        if mem["forkserver_rss"] is not None:
            res.add("rss_forkserver", "forkserver RSS", "MiB", mem["forkserver_rss"] / 2**20)
    old_tree = psutil.Process(first.pid).children(recursive=True)

    # 6: two 1-s jobs running; SIGKILL; restart; both running again.
    jobs = q.add_bulk([("sleep", {"s": RESTART_JOB_S, "mark": str(mark_dir)})
                       for _ in range(2)])
    ids = [j.id for j in jobs]
    _wait_for(lambda: all(i in _marks(mark_dir) for i in ids), 15, "both jobs running")
    t_kill = time.monotonic()
    first.kill()
    first.wait()
    second = sups.start(config, log2)

    def rerun_times() -> list[float] | None:
        marks = _marks(mark_dir)
        starts = [min((t for t, _pid in marks.get(i, []) if t > t_kill), default=None)
                  for i in ids]
        return None if None in starts else starts  # type: ignore[return-value]

    starts = _wait_for(rerun_times, 30, "both jobs running again after the restart")
    res.add("restart", "restart: SIGKILL -> both jobs running again (new supervisor)", "s",
            max(starts) - t_kill)
    if not _file_has(log2, "left active by a previous run")():
        res.problems.append(f"restart run {run}: the new supervisor did not log the requeue "
                            "of the jobs its previous incarnation left active")
    _wait_for(lambda: q.counts()["completed"] == 2, 15, "both jobs completed")
    boot_line = re.compile(r"booted in ([0-9.]+) ms")
    _wait_for(lambda: len(boot_line.findall(log2.read_text(errors="replace"))) >= 4, 15,
              "both children of the new supervisor recycled")
    code = _stop_process(second, CLOSE_DEADLINE_S)
    if code != 0:
        res.problems.append(f"restart run {run}: second supervisor exited with {code}")
    leftovers = []
    for p in old_tree:  # is_running() also checks the start time: no pid reuse mix-up
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(p.pid)
    if leftovers:
        res.problems.append(f"restart run {run}: processes of the SIGKILLed supervisor still "
                            f"alive after the run: {leftovers}")
    # "child #0 pid 123 booted in 45.6 ms": at start, the two children boot at
    # once while the forkserver starts; after that, one at a time from it.
    for path in (log1, log2):
        for i, ms in enumerate(boot_line.findall(path.read_text(errors="replace"))):
            if i < 2:
                res.add("boot_sup_cold", "child boot under rqsup start: the first 2 (at once, "
                        "forkserver starting)", "ms", float(ms))
            else:
                res.add("boot_sup_warm", "child boot under rqsup start: a recycled child", "ms",
                        float(ms))
    res.problems += _log_problems(log1, f"restart run {run}: first supervisor")
    res.problems += _log_problems(log2, f"restart run {run}: second supervisor")
    check_drained(q, res, f"restart run {run}", 2)


# -- report ----------------------------------------------------------------------------------


def targets(res: Results) -> list[dict[str, Any]]:
    from bench_core import fmt

    out: list[dict[str, Any]] = []

    def check(what: str, row: Row | None, op: str, goal: float, unit: str,
              extra: str = "") -> None:
        if row is None:
            out.append({"target": what, "goal": f"{op} {goal:g} {unit}", "result": None,
                        "met": None, "note": "not measured"})
            return
        met = row.median >= goal if op == ">=" else row.median < goal
        out.append({"target": what, "goal": f"{op} {goal:g} {unit}", "result": row.median,
                    "met": met, "note": extra, "ratio": row.median / goal})

    noop = [(f"prefetch {p}", res.get(f"noop_p{p}"))
            for p in ("default", 0, 4 * NOOP_CONCURRENCY)]
    best = max(((k, r) for k, r in noop if r is not None), key=lambda kr: kr[1].median,
               default=(None, None))
    note = f"best: {best[0]}, {fmt(best[1].median)} jobs/s" if best[1] is not None else ""
    check("process no-op, 2 children", res.get("noop_pdefault"), ">=", 10_000, "jobs/s", note)
    check("cpu scaling 2 children / 1", res.get("cpu_scale"), ">=", 1.8, "x")
    check("loop lag p99, children busy", res.get("lag_p99"), "<", 10, "ms")
    check("restart recovery", res.get("restart"), "<", 2, "s")
    return out


def print_report(info: dict[str, Any], runs: int, loops: int, res: Results,
                 tg: list[dict[str, Any]], total_s: float) -> None:
    from bench_core import print_table, print_targets

    print()
    print(f"rqsup bench_supervisor: {info['cores']} cores, {info['cpu_model']}, "
          f"Python {info['python']}, redis-server {info['redis_server']}, "
          f"redis-py {info['redis_py']}, transport: {info['transport']}, "
          f"runs per row: {runs}")
    print(f"measured: {info['rqsup']}")
    print(f"cpu job calibration: {loops:,} loops of bench_procs.burn = "
          f"{CPU_JOB_S * 1e3:.0f} ms in the benchmark process")
    print(f"load average at start {info['load_avg_at_start']}, at end "
          f"{[round(x, 2) for x in os.getloadavg()]} (other processes skew the figures)")
    print_table(res)
    print_targets(tg, 30)
    if res.problems:
        print()
        print("problems seen during the run:")
        for p in res.problems:
            print(f"  - {p}")
    print(f"\ntotal time {total_s:.1f}s")


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import tempfile
    from pathlib import Path

    from bench_core import Results, WarningCollector, machine_info

    from rqsup import Queue
    from rqsup.redis_server import RedisServer

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tcp", action="store_true", help="TCP loopback instead of a unix socket")
    ap.add_argument("--quick", action="store_true", help="1 run per row instead of 3")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--only", metavar="STEPS",
                    help=f"comma-separated subset of: {','.join(STEPS)}")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(STEPS)
    if only - set(STEPS):
        ap.error(f"unknown steps {sorted(only - set(STEPS))}; known: {','.join(STEPS)}")
    runs = 1 if args.quick else 3
    # A SIGTERM still runs the finally below: no redis-server or supervisor is left.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # The children import benchmarks.bench_procs: the forkservers (here, in the
    # worker processes and under `rqsup start`) need the repository root on
    # their path whatever the current directory is.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    if REPO not in sys.path:  # the spawned worker processes take this sys.path
        sys.path.insert(1, REPO)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    collector = WarningCollector()
    logging.getLogger().addHandler(collector)
    collector.install_thread_hook()

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="rqsup-bench-sup-"))
    srv = RedisServer(tmp / "redis", unix_socket=not args.tcp, appendonly=False)
    if not srv.socket_path and srv.port == SHARED_REDIS_PORT:
        raise SystemExit("refusing to use port 6379 (the shared Redis)")
    transport = "tcp 127.0.0.1" if args.tcp else "unix socket"
    res = Results()
    sups = Supervisors()
    queues: list[Queue] = []
    print("calibrating the cpu job...", file=sys.stderr, flush=True)
    loops = calibrate(CPU_JOB_S)
    srv.start()
    try:
        url = srv.url
        info = machine_info(url, transport)

        def queue(name: str) -> Queue:
            q = Queue(name, url)
            queues.append(q)
            return q

        qn, qc, qd, ql, qr = (queue(n) for n in ("bench-noop", "bench-cpu", "bench-dispatch",
                                                 "bench-lag", "bench-restart"))
        steps: list[tuple[str, str, Callable[[int], None]]] = [
            ("noop", "process no-op, prefetch default", lambda i: bench_noop(qn, url, res, None)),
            ("noop", "process no-op, prefetch 0", lambda i: bench_noop(qn, url, res, 0)),
            ("noop", f"process no-op, prefetch {4 * NOOP_CONCURRENCY}",
             lambda i: bench_noop(qn, url, res, 4 * NOOP_CONCURRENCY)),
            ("cpu", "cpu scaling", lambda i: bench_cpu(qc, url, res, loops)),
            ("dispatch", "dispatch overhead + recycle", lambda i: bench_dispatch(qd, url, res)),
            ("boot", "child boot", lambda i: bench_boot(res)),
            ("lag", "loop lag", lambda i: bench_lag(ql, url, res, loops)),
            ("restart", "restart recovery + RSS",
             lambda i: bench_restart(qr, url, res, tmp, sups, i)),
        ]
        # Rounds: each run of every step before the next run of any, so a slow
        # spell of the machine spreads over the rows instead of hitting one.
        for i in range(runs):
            for key, label, step in steps:
                if key not in only:
                    continue
                t0 = time.perf_counter()
                try:
                    step(i + 1)
                except Exception as exc:
                    log.exception("%s run %d failed", label, i + 1)
                    res.problems.append(f"{label} run {i + 1}: {type(exc).__name__}: {exc}")
                print(f"  {label}: run {i + 1}/{runs} done in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr, flush=True)
    finally:
        sups.stop_all()
        for q in queues:
            with contextlib.suppress(Exception):
                q.obliterate(force=True)
            q.close()
        srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    res.problems += [f"log: {w}" for w in collector.records]
    tg = targets(res)
    total_s = time.perf_counter() - started
    print_report(info, runs, loops, res, tg, total_s)
    if args.json:
        from bench_core import write_json

        write_json(args.json, info, runs, res, tg, total_s, cpu_loops_50ms=loops)
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())

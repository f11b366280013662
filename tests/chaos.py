"""The fault suite's harness: real supervisors and children under random kills.

A run keeps a ledger of every execution outside the queue's Redis (a file
written by the processor, :mod:`tests.fixtures.chaos_procs`) and a log of
every fault it caused (which processes each one took down, and when, on
CLOCK_MONOTONIC like the ledger). Faults: SIGKILL of a child, SIGKILL of a
supervisor (restarted as systemd would), SIGTERM restarts, SIGKILL of
Redis (``appendfsync always``), a supervisor started while Redis is down,
an out-of-memory episode, and damaged jobs planted among the good ones.

:meth:`Chaos.verdict` then checks what the suite promises: nothing lost,
every job completed or failed as its policy says, every second execution
explained (by a fault that took down the process running it, or by the
job's own designed failure), no queue stopped, nothing active at the end,
no child left. ``tests/test_chaos.py`` runs it at CI size;
``benchmarks/soak.py`` runs it longer and prints the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from rqsup import Queue
from rqsup.redis_server import RedisServer, free_port
from tests.procs import REPO, RQSUP, alive, config_text, title, uid

PROC = "tests.fixtures.chaos_procs:work"
FAULTS = ("child-kill", "supervisor-kill", "sigterm-restart", "redis-kill", "oom",
          "start-while-down")


@dataclass
class Plan:
    """What a run does; the defaults are the CI size (a few minutes at most)."""

    jobs: int = 3000
    supervisors: int = 2
    concurrency: int = 2
    #: Seconds between faults (uniform in this range) while jobs remain.
    fault_every_s: tuple[float, float] = (0.4, 0.9)
    #: Relative weights of the faults.
    weights: dict[str, int] = field(default_factory=lambda: {
        "child-kill": 5, "supervisor-kill": 3, "sigterm-restart": 2, "redis-kill": 1,
        "oom": 1, "start-while-down": 1})
    bad_jobs: int = 12
    #: Hostile jobs among them (tests/fixtures/hostile_procs.py): daemons left
    #: behind, garbage on the pipe.
    hostile_jobs: int = 10
    #: Work per job, in ms (uniform).
    ms: tuple[int, int] = (5, 40)
    seed: int = 8
    deadline_s: float = 240.0


@dataclass
class Fault:
    kind: str
    at_ns: int
    #: pids this fault took down (a supervisor's: it and all its descendants).
    pids: set[int]
    #: Every process (a Redis kill or an OOM episode touches all running jobs).
    everyone: bool = False


class Sup:
    """One supervisor "unit": a name and a config; started and restarted."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([RQSUP, "start", str(self.cfg)], cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> set[int]:
        """The supervisor and every descendant now."""
        if not self.running():
            return set()
        assert self.proc is not None
        try:
            ps = psutil.Process(self.proc.pid)
            return {self.proc.pid, *(p.pid for p in ps.children(recursive=True))}
        except psutil.Error:
            return set()

    def children(self, queue: str) -> list[int]:
        if not self.running():
            return []
        assert self.proc is not None
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p.pid for p in kids if title(p).startswith(f"rqsup: child {queue}#") and alive(p)]

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Chaos:
    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.dir = workdir
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.ledger = workdir / "ledger"
        self.port = free_port()
        self.redis = RedisServer(workdir / "redis", unix_socket=False, port=self.port,
                                 appendonly=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.queue = f"chaos-{uid()}"
        self.faults: list[Fault] = []
        self.kinds: dict[str, str] = {}
        self.bad: dict[str, str] = {}
        self.hostile: dict[str, str] = {}
        self.pidfile = workdir / "daemons"
        self.sups: list[Sup] = []
        for i in range(plan.supervisors):
            cfg = workdir / f"sup{i}.toml"
            cfg.write_text(config_text(
                self.url, f"chaos{i}-{uid()}",
                [{"name": self.queue, "processor": PROC, "concurrency": plan.concurrency}],
                lease="3s", renew_interval="0.5s", stall_interval="1s", shutdown_grace="2s",
                block_timeout="1s", status_interval="5s", max_stalled_count=100))
            self.sups.append(Sup(cfg, workdir / f"sup{i}.log"))
        self.started_at = 0.0
        self.finished_in_s = 0.0

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        self.redis.start()
        self.started_at = time.monotonic()
        for s in self.sups:
            s.start()
        q = Queue(self.queue, self.url)
        try:
            self._produce_and_fault(q)
            self._settle(q)
        finally:
            q.close()
            self._stop_all()
        self.finished_in_s = time.monotonic() - self.started_at

    def _job_spec(self, n: int) -> dict[str, Any]:
        kind = "plain"
        roll = self.rng.random()
        ms = self.rng.randint(*self.plan.ms)
        if roll < 0.05:
            kind = "flaky"
        elif roll < 0.08:
            kind = "doomed"
        jid = f"j{n}"
        self.kinds[jid] = kind
        return {"name": "w", "data": {"ledger": str(self.ledger), "ms": ms,
                                      "kind": kind, "n": n},
                "opts": {"job_id": jid, "attempts": 100, "backoff": 0,
                         "remove_on_complete": False, "remove_on_fail": False}}

    def _add(self, q: Queue, specs: list[dict[str, Any]]) -> None:
        """Custom ids make a retried add a no-op: retry until Redis takes it."""
        deadline = time.monotonic() + 60
        while True:
            try:
                q.add_bulk(specs)
                return
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                self._restart_dead()

    def _produce_and_fault(self, q: Queue) -> None:
        p = self.plan
        batches = [list(range(i, min(i + 100, p.jobs))) for i in range(0, p.jobs, 100)]
        bad_at = set(self.rng.sample(range(len(batches)), min(len(batches), p.bad_jobs)))
        next_fault = time.monotonic() + self.rng.uniform(*p.fault_every_s)
        for b, batch in enumerate(batches):
            self._add(q, [self._job_spec(n) for n in batch])
            if b in bad_at:
                self._plant(q, len(self.bad))
                self._hostile(q, len(self.hostile))
            pause_until = time.monotonic() + 0.15
            while time.monotonic() < pause_until:
                self._restart_dead()
                if time.monotonic() >= next_fault:
                    self._fault()
                    next_fault = time.monotonic() + self.rng.uniform(*p.fault_every_s)
                time.sleep(0.02)
        # Faults go on while jobs remain, for a while.
        until = time.monotonic() + 10
        while time.monotonic() < until and self._left(q) > 0:
            self._restart_dead()
            if time.monotonic() >= next_fault:
                self._fault()
                next_fault = time.monotonic() + self.rng.uniform(*p.fault_every_s)
            time.sleep(0.05)

    def _hostile(self, q: Queue, i: int) -> None:
        """A hostile job: it ends (completed or failed), and leaves nothing."""
        kind = "daemon" if i % 2 else "garbage"
        jid = f"hostile{i}"
        self.hostile[jid] = kind
        self._add(q, [{"name": "w", "data": {"kind": kind, "pidfile": str(self.pidfile),
                                            "ledger": str(self.ledger)},
                       "opts": {"job_id": jid, "attempts": 1, "remove_on_complete": False,
                                "remove_on_fail": False}}])

    def _plant(self, q: Queue, i: int) -> None:
        """A damaged job in wait: a non-integer field, or a key of the wrong type."""
        r = redis.Redis.from_url(self.url)
        try:
            jid = f"bad{i}"
            key = q.core.keys.job(jid)
            if i % 2:
                r.set(key, "junk")
                self.bad[jid] = "malformed"
            else:
                r.hset(key, mapping={"name": "w", "data": "{}", "attempts_started": "x"})
                self.bad[jid] = "failed"
            r.lpush(q.core.keys.wait, jid)
        except (redis.RedisError, OSError):
            self.bad.pop(f"bad{i}", None)
        finally:
            r.close()

    def _left(self, q: Queue) -> int:
        try:
            c = q.counts()
        except (redis.RedisError, OSError):
            return 1
        return c["wait"] + c["prioritized"] + c["delayed"] + c["active"]

    def _restart_dead(self) -> None:
        """systemd's Restart=on-failure, RestartSec about 0.2 s."""
        for s in self.sups:
            if not s.running():
                time.sleep(0.2)
                s.start()

    def _record(self, kind: str, pids: set[int], everyone: bool = False) -> None:
        self.faults.append(Fault(kind, time.monotonic_ns(), pids, everyone))

    def _fault(self) -> None:
        kinds = list(self.plan.weights)
        if not hasattr(self, "_first_round"):
            # Every kind at least once, early; then at random by weight.
            self._first_round = self.rng.sample(kinds, len(kinds))
        if self._first_round:
            kind = self._first_round.pop()
        else:
            kind = self.rng.choices(kinds, [self.plan.weights[k] for k in kinds])[0]
        live = [s for s in self.sups if s.running()]
        if not live:
            self._first_round.append(kind)
            return
        s = self.rng.choice(live)
        # A fault is recorded once the processes it takes down are dead: a job
        # that started in one of them before then is explained by it.
        if kind == "child-kill":
            kids = s.children(self.queue)
            if not kids:  # still booting: try this kind again next time
                self._first_round.append(kind)
                return
            pid = self.rng.choice(kids)
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                ps = psutil.Process(pid)
                desc = {p.pid for p in ps.children(recursive=True)}
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    ps.wait(5)
                self._record(kind, {pid, *desc})
        elif kind == "supervisor-kill":
            tree = s.tree()
            s.signal(signal.SIGKILL)
            s.wait(10)
            self._record(kind, tree | s.tree())
            s.start()
        elif kind == "sigterm-restart":
            tree = s.tree()
            s.signal(signal.SIGTERM)
            if s.wait(20) is None:
                s.signal(signal.SIGKILL)
                s.wait(10)
            self._record(kind, tree)
            s.start()
        elif kind == "redis-kill":
            # Not an explanation for a second execution: with appendfsync
            # always, a Redis crash shorter than a lease must cost no rerun.
            self.redis.kill()
            self._record(kind, set())
            time.sleep(self.rng.uniform(0.2, 0.8))
            self.redis.start()
        elif kind == "oom":
            r = redis.Redis.from_url(self.url)
            try:
                r.config_set("maxmemory", "1")
                self._record(kind, set())
                time.sleep(self.rng.uniform(0.5, 1.5))
                r.config_set("maxmemory", "0")
            finally:
                r.close()
        elif kind == "start-while-down":
            tree = s.tree()
            self.redis.kill()
            s.signal(signal.SIGKILL)
            s.wait(10)
            self._record(kind, tree)
            s.start()
            time.sleep(1.0)  # the new supervisor waits for Redis meanwhile
            self.redis.start()

    def _settle(self, q: Queue) -> None:
        deadline = time.monotonic() + self.plan.deadline_s
        while self._left(q) > 0 and time.monotonic() < deadline:
            self._restart_dead()
            time.sleep(0.1)
        # No queue stopped: every supervisor still runs fresh jobs.
        self.final = [f"final-{uid()}" for _ in range(20)]
        self._add(q, [{"name": "w", "data": {"ledger": str(self.ledger), "ms": 1},
                       "opts": {"job_id": jid, "remove_on_complete": False}}
                      for jid in self.final])
        for jid in self.final:
            self.kinds[jid] = "plain"
        while self._left(q) > 0 and time.monotonic() < deadline:
            self._restart_dead()
            time.sleep(0.05)

    def _stop_all(self) -> None:
        self.left_children: list[str] = []
        seen: set[int] = set()
        for s in self.sups:
            seen |= s.tree()
            s.signal(signal.SIGTERM)
        for s in self.sups:
            if s.wait(20) is None:
                s.signal(signal.SIGKILL)
                s.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.left_children = [title(p) for p in psutil.process_iter()
                                  if self.queue in title(p) and alive(p)]
            if not self.left_children:
                break
            time.sleep(0.05)
        for pid in seen:  # cleanup only: the verdict has its list already
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- the verdict ---------------------------------------------------------------------

    def executions(self) -> dict[str, list[tuple[int, int, bool, int]]]:
        """job id -> [(start ns, pid, ended, attempts made before)] in start order."""
        starts: dict[str, list[list[Any]]] = defaultdict(list)
        if not self.ledger.exists():
            return {}
        for line in self.ledger.read_text().splitlines():
            what, jid, pid, at, made = line.split()
            if what == "start":
                starts[jid].append([int(at), int(pid), False, int(made)])
            else:
                for e in reversed(starts[jid]):
                    if e[1] == int(pid) and not e[2]:
                        e[2] = True
                        break
        return {j: [(a, p, d, m) for a, p, d, m in sorted(v)] for j, v in starts.items()}

    def verdict(self) -> dict[str, Any]:
        """Check every promise; returns the numbers (and a list of problems)."""
        problems: list[str] = []
        r = redis.Redis.from_url(self.url)
        q = Queue(self.queue, self.url)
        self.redis.start()
        try:
            keys = q.core.keys
            states = Counter[str]()
            for jid, kind in self.kinds.items():
                h = {k.decode(): v.decode() for k, v in r.hgetall(keys.job(jid)).items()}
                if not h:
                    problems.append(f"job {jid} lost (no hash)")
                    continue
                if r.zscore(keys.completed, jid) is not None:
                    state = "completed"
                elif r.zscore(keys.failed, jid) is not None:
                    state = "failed"
                else:
                    state = q.get_job(jid).state() if q.get_job(jid) else "missing"
                states[state] += 1
                want = "failed" if kind == "doomed" else "completed"
                if state != want:
                    problems.append(f"job {jid} ({kind}) is {state}, not {want}: "
                                    f"{h.get('failed_reason', '')[:120]}")
            for jid, want in self.bad.items():
                in_malformed = r.zscore(keys.malformed, jid) is not None
                err = r.hget(keys.job(jid), "error_type") if r.type(keys.job(jid)) == b"hash" \
                    else None
                ok = in_malformed if want == "malformed" else err == b"MalformedJob"
                if not ok:
                    problems.append(f"bad job {jid} not {want}")
            for jid, kind in self.hostile.items():
                done = (r.zscore(keys.completed, jid) is not None
                        or r.zscore(keys.failed, jid) is not None)
                if not done:
                    problems.append(f"hostile job {jid} ({kind}) did not end")
                elif kind == "garbage" and r.zscore(keys.failed, jid) is None:
                    problems.append(f"hostile job {jid} wrote garbage and was not failed")
            daemons = ([int(p) for p in self.pidfile.read_text().split()]
                       if self.pidfile.exists() else [])
            alive_daemons = [p for p in daemons if _alive_pid(p)]
            if alive_daemons:
                problems.append(f"daemons left behind by jobs still run: {alive_daemons}")
            active = r.zcard(keys.active)
            if active:
                problems.append(f"{active} job(s) still active at the end")
            runs = self.executions()
            reruns = explained = by_design = 0
            by_fault = Counter[str]()
            for jid, ex in runs.items():
                for i, (at, pid, ended, made) in enumerate(ex[:-1]):
                    reruns += 1
                    nxt = ex[i + 1][0]
                    if self.kinds.get(jid) == "flaky" and made == 0 and ended:
                        by_design += 1
                        continue
                    window = [f for f in self.faults if at <= f.at_ns <= nxt]
                    cause = next((f for f in window if pid in f.pids), None) or next(
                        (f for f in window if f.everyone), None)
                    if cause is None:
                        problems.append(f"job {jid} ran again with no fault to explain it "
                                        f"(pid {pid})")
                    else:
                        explained += 1
                        by_fault[cause.kind] += 1
            never = [j for j in self.kinds if j not in runs]
            if never:
                problems.append(f"{len(never)} job(s) never ran: {never[:5]}")
            if self.left_children:
                problems.append(f"children left after the stop: {self.left_children}")
            heartbeats = [s for s in r.scan_iter(match="rqsup:supervisor:*")]
            if heartbeats:
                problems.append(f"heartbeats left after a clean stop: {heartbeats}")
            crashed = [line for s in self.sups for line in s.log.read_text().splitlines()
                       if " crashed (" in line]
            if crashed:
                problems.append(f"tasks crashed: {crashed[:3]}")
            return {
                "jobs": len(self.kinds), "bad_jobs": len(self.bad),
                "hostile_jobs": len(self.hostile), "daemons": len(daemons),
                "states": dict(states),
                "executions": sum(len(v) for v in runs.values()), "reruns": reruns,
                "explained": explained, "by_design": by_design,
                "reruns_by_fault": dict(by_fault),
                "faults": dict(Counter(f.kind for f in self.faults)),
                "supervisor_starts": sum(s.starts for s in self.sups),
                "seconds": round(self.finished_in_s, 1), "problems": problems,
            }
        finally:
            q.close()
            r.close()

    def cleanup(self) -> None:
        self.redis.cleanup()


def _alive_pid(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def table(result: dict[str, Any]) -> str:
    """The verdict as a small table (benchmarks/soak.py prints it)."""
    rows = [("jobs (plus damaged, hostile)",
             f"{result['jobs']} (+{result['bad_jobs']}, +{result['hostile_jobs']})"),
            ("daemons left by jobs, all killed", result["daemons"]),
            ("final states", json.dumps(result["states"])),
            ("executions", result["executions"]),
            ("second executions", result["reruns"]),
            ("  explained by a fault", result["explained"]),
            ("  by a designed failure", result["by_design"]),
            ("  by fault", json.dumps(result["reruns_by_fault"])),
            ("faults injected", json.dumps(result["faults"])),
            ("supervisor starts", result["supervisor_starts"]),
            ("seconds", result["seconds"]),
            ("problems", len(result["problems"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

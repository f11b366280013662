"""Failover runs: real supervisors process jobs while a Cluster primary or a
Sentinel primary is failed over under them.

The processor (tests.fixtures.chaos_procs:work) writes every execution to a
ledger outside Redis. The verdict checks: every job completed (nothing
lost), every second execution explained (its first run started before the
last failover and the second after a failover began: the lease of a claim
or a result Redis acknowledged but never replicated), and every supervisor
completing jobs again within ``recover_bound_s`` of the topology being
healthy again. ``tests/test_failover.py`` runs it at CI size;
``benchmarks/bench_cluster.py --failover`` longer.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqsup import Queue
from rqsup.queue.connection import sync_client
from tests.helpers import wait_until
from tests.procs import Supervisor, config_text, uid

PROC = "tests.fixtures.chaos_procs:work"


def wait_for_replicas(q: Queue, timeout_ms: int = 5000) -> None:
    """WAIT on the connection (on a Cluster: the node) that holds the queue."""
    c: Any = q.client
    if hasattr(c, "get_node_from_key"):
        c.execute_command("WAIT", 1, timeout_ms, target_nodes=c.get_node_from_key(
            q.core.keys.wait))
    else:
        c.execute_command("WAIT", 1, timeout_ms)


@dataclass
class Fault:
    kind: str
    began_ns: int
    healthy_ns: int = 0
    #: Supervisor name -> seconds from healthy to its first job completed.
    recovered: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    workdir: Path
    url: str
    jobs: int = 5000
    supervisors: int = 2
    concurrency: int = 2
    mode: str = "process"
    #: Within this long after the topology is healthy again, every supervisor
    #: completes jobs again.
    recover_bound_s: float = 15.0
    wait_replicas: int = 0
    queue: str = field(default_factory=lambda: f"fo-{uid()}")
    faults: list[Fault] = field(default_factory=list)
    sups: list[Supervisor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    #: Jobs added after a fault, so each supervisor's recovery is seen even
    #: when the others could finish the rest alone.
    probes: list[str] = field(default_factory=list)

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger"

    def spec(self, jid: str) -> dict[str, Any]:
        return {"name": "w", "data": {"ledger": str(self.ledger), "ms": 1},
                "opts": {"job_id": jid, "attempts": 100, "backoff": 0,
                         "remove_on_complete": False}}

    def start(self) -> Queue:
        q = Queue(self.queue, self.url)
        specs = [self.spec(f"j{n}") for n in range(self.jobs)]
        for i in range(0, len(specs), 500):
            q.add_bulk(specs[i:i + 500])
        # The adds are on a replica too before any fault (an add Redis
        # acknowledged and then lost in a failover is Redis's limit, not ours).
        wait_for_replicas(q)
        for i in range(self.supervisors):
            cfg = self.workdir / f"sup{i}.toml"
            self.names.append(f"fo{i}-{uid()}")
            cfg.write_text(config_text(
                self.url, self.names[-1],
                [{"name": self.queue, "processor": PROC, "concurrency": self.concurrency,
                  "mode": self.mode}],
                lease="3s", renew_interval="0.5s", stall_interval="1s", shutdown_grace="3s",
                block_timeout="1s", status_interval="5s", max_stalled_count=100))
            if self.wait_replicas:
                text = cfg.read_text().replace("[supervisor]",
                                               f"wait_replicas = {self.wait_replicas}\n\n"
                                               "[supervisor]", 1)
                cfg.write_text(text)
            self.sups.append(Supervisor(cfg, self.workdir / f"sup{i}.log"))
        for s in self.sups:
            s.wait_log("ready", "the supervisor ready", timeout=30)
        return q

    def completed(self, q: Queue) -> int:
        def readable() -> list[int] | None:
            try:
                return [int(q.counts()["completed"])]
            except Exception:  # the topology is failing over under us
                return None
        return int(wait_until(readable, "the queue's counts readable", 10)[0])

    def _at_least(self, q: Queue, n: int, what: str) -> bool:
        for s in self.sups:
            s.check_running(what)
        return self.completed(q) >= n

    def fault_when(self, q: Queue, done: int, kind: str, act: Callable[[], Any],
                   timeout_s: float = 120.0) -> None:
        """When ``done`` jobs completed, run ``act`` (it returns once the
        topology is healthy again) and record the fault."""
        wait_until(lambda: self._at_least(q, done, kind), f"{done} jobs completed before {kind}",
                   timeout_s)
        f = Fault(kind, time.monotonic_ns())
        act()
        f.healthy_ns = time.monotonic_ns()
        self.faults.append(f)
        self._watch_recovery(q, f)

    def _watch_recovery(self, q: Queue, f: Fault) -> None:
        """Add a few jobs at a time until every supervisor completed one after
        the topology was healthy again, or the bound passed."""
        healthy_ms = time.time() * 1000 - (time.monotonic_ns() - f.healthy_ns) / 1e6
        added_at = [0.0]

        def all_recovered() -> bool:
            if time.monotonic() - added_at[0] < 0.05:  # a round per 50 ms: 10 jobs, a look
                return False
            added_at[0] = time.monotonic()
            batch = [f"p{len(self.probes) + i}" for i in range(10)]
            with contextlib.suppress(Exception):  # a transient: the next round adds them
                q.add_bulk([self.spec(jid) for jid in batch])
                self.probes += batch
            self._note_recovered(q, f, healthy_ms)
            return len(f.recovered) == len(self.names)
        # Not recovering in time is a finding of the verdict, not an error here.
        with contextlib.suppress(AssertionError):
            wait_until(all_recovered, "every supervisor completing a job",
                       self.recover_bound_s + 5)

    def _note_recovered(self, q: Queue, f: Fault, healthy_ms: float) -> None:
        """Each supervisor's first completion since the topology was healthy."""
        with contextlib.suppress(Exception):
            recent = q.client.zrevrange(q.core.keys.completed, 0, 300)
            pipe = q.client.pipeline(transaction=False)
            for jid in recent:
                pipe.hmget(q.core.keys.job(jid.decode()), "worker", "finished_on")
            for worker, finished in pipe.execute():
                if not worker or not finished or float(finished) < healthy_ms:
                    continue
                name = worker.decode().split("@", 1)[0]
                took = (float(finished) - healthy_ms) / 1000
                if name in self.names:
                    f.recovered[name] = min(took, f.recovered.get(name, took))

    def finish(self, q: Queue, timeout_s: float = 180.0) -> None:
        """Until every job is completed as a new connection sees it (one made
        before a failover may still read a demoted primary)."""
        def done() -> bool:
            with Queue(self.queue, self.url) as fresh:
                return self._at_least(fresh, self.jobs + len(self.probes), "all jobs completed")
        wait_until(done, f"all {self.jobs} jobs and the probes completed", timeout_s)

    def stop(self) -> None:
        for s in self.sups:
            s.signal(15)
        for s in self.sups:
            s.wait_exit(30)

    def verdict(self, q: Queue) -> dict[str, Any]:
        problems: list[str] = []
        client = sync_client(self.url)
        keys = q.core.keys
        states = Counter[str]()
        for jid in [f"j{n}" for n in range(self.jobs)] + self.probes:
            if client.zscore(keys.completed, jid) is not None:
                states["completed"] += 1
            else:
                job = q.get_job(jid)
                states[job.state() if job else "lost"] += 1
                where = [c.connection_pool.get_master_address()  # type: ignore[attr-defined]
                         for c in (client, q.client) if hasattr(c.connection_pool,
                                                                "get_master_address")]
                problems.append(f"job {jid} is {job.state() if job else 'lost'} "
                                f"(primary as seen by the verdict and the queue: {where}; "
                                f"zscore {client.zscore(keys.completed, jid)})")
        starts: dict[str, list[int]] = defaultdict(list)
        for line in self.ledger.read_text().splitlines():
            what, jid, _pid, at, _made = line.split()
            if what == "start":
                starts[jid].append(int(at))
        reruns = explained = 0
        for jid, at in starts.items():
            at.sort()
            for first, again in itertools.pairwise(at):
                reruns += 1
                if any(first <= f.healthy_ns and again >= f.began_ns for f in self.faults):
                    explained += 1
                else:
                    problems.append(f"job {jid} ran again with no failover to explain it")
        recovery: dict[str, float] = {}
        for f in self.faults:
            for name in self.names:
                took = f.recovered.get(name)
                if took is None:
                    problems.append(f"supervisor {name} completed nothing within "
                                    f"{self.recover_bound_s + 5:.0f}s after {f.kind}")
                    continue
                recovery[f"{f.kind} {name}"] = round(took, 2)
                if took > self.recover_bound_s:
                    problems.append(f"supervisor {name} took {took:.1f}s to complete a job "
                                    f"after {f.kind} (bound {self.recover_bound_s}s)")
        crashed = [line for s in self.sups for line in s.log().splitlines()
                   if " crashed (" in line]
        if crashed:
            problems.append(f"tasks crashed: {crashed[:3]}")
        client.close()
        return {"jobs": self.jobs + len(self.probes), "states": dict(states), "reruns": reruns,
                "explained": explained, "recovery_s": recovery,
                "faults": [(f.kind, round((f.healthy_ns - f.began_ns) / 1e9, 2))
                           for f in self.faults], "problems": problems}

"""What a scrape reads when it comes: the queues' gauges (from Redis) and the
children's (from the pools and the kernel).

:class:`QueueGauges` reads every queue in one pipelined call (gauges.lua
per queue, plus the roster for consumers), cached for a second, so that two
scrapes close together, or many Prometheus servers, cost Redis one read.
It runs in the metrics HTTP server's thread with a sync client of its own,
never in the supervisor's event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rqsup.queue import roster
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import SyncDriver
from rqsup.queue.roster import discover_queues
from rqsup.queue.scripts import Batch

#: The states of rqsup_queue_jobs, in gauges.lua's order.
GAUGE_STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed",
                "waiting-children")
#: A scrape within this long of the last one reuses its Redis read.
CACHE_S = 1.0
#: Queues found by SCAN are looked for again after this long.
DISCOVER_EVERY_S = 30.0


class QueueGauges(Collector):
    """``rqsup_queue_*`` for the queues ``queues()`` names (and, with
    ``discover``, every queue found under the prefix)."""

    def __init__(self, client: redis.Redis, prefix: str,
                 queues: Callable[[], list[str]], *, discover: bool = False) -> None:
        self.client = client
        self.prefix = prefix
        self.queues = queues
        self.discover = discover
        self._driver = SyncDriver(client)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._found: tuple[float, list[str]] = (0.0, [])
        self._cores: dict[str, QueueCore] = {}

    def _names(self) -> list[str]:
        names = set(self.queues())
        if self.discover:
            at, found = self._found
            if time.monotonic() - at > DISCOVER_EVERY_S:
                found = discover_queues(self.client, self.prefix)
                self._found = (time.monotonic(), found)
            names.update(found)
        return sorted(names)

    def read(self) -> dict[str, Any]:
        """``{"queues": {name: gauges.lua reply}, "consumers": {name: n}}``."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
                return self._cached[1]
            names = self._names()
            cores = [self._cores.setdefault(n, QueueCore(n, self.prefix)) for n in names]
            replies = self._driver.execute(Batch([c.script("gauges") for c in cores],
                                                 errors_in_place=True)) if cores else []
            beats = self._driver.drive(roster.op_heartbeats(self.prefix))
            out: dict[str, Any] = {"queues": {}, "consumers": {}}
            for name, reply in zip(names, replies, strict=True):
                if isinstance(reply, Exception):
                    continue  # one queue's damaged keys do not hide the others
                out["queues"][name] = [int(v) for v in reply]
                out["consumers"][name] = len(roster.workers_of(beats, name))
            self._cached = (time.monotonic(), out)
            return out

    def collect(self) -> Iterator[Any]:
        try:
            data = self.read()
        except redis.RedisError:
            data = {"queues": {}, "consumers": {}}
        jobs = GaugeMetricFamily("rqsup_queue_jobs", "Jobs per state.", labels=["queue", "state"])
        oldest = GaugeMetricFamily("rqsup_queue_oldest_waiting_seconds",
                                   "Age of the next job to run since it became ready (0: none).",
                                   labels=["queue"])
        paused = GaugeMetricFamily("rqsup_queue_paused", "1 while paused.", labels=["queue"])
        consumers = GaugeMetricFamily(
            "rqsup_queue_consumers", "Supervisors and workers serving the queue (heartbeats).",
            labels=["queue"])
        limited = GaugeMetricFamily("rqsup_queue_rate_limited",
                                    "1 while the queue's rate limit holds claims back.",
                                    labels=["queue"])
        for name, v in data["queues"].items():
            now = v[0]
            for state, n in zip(GAUGE_STATES, v[1:8], strict=True):
                jobs.add_metric([name, state], n)
            oldest.add_metric([name], max(0.0, (now - v[8]) / 1000) if v[8] >= 0 else 0.0)
            paused.add_metric([name], v[9])
            limited.add_metric([name], 1 if v[10] > 0 else 0)
            consumers.add_metric([name], data["consumers"].get(name, 0))
        yield from (jobs, oldest, paused, consumers, limited)


class ChildrenCollector(Collector):
    """``rqsup_children``, ``rqsup_child_rss_bytes``, ``rqsup_child_cpu_seconds_total``
    of the process-mode queues ``pools()`` lists as (queue, ChildPool)."""

    def __init__(self, pools: Callable[[], list[tuple[str, Any]]]) -> None:
        self.pools = pools
        self._cpu_seen: dict[str, float] = {}

    def collect(self) -> Iterator[Any]:
        states = GaugeMetricFamily("rqsup_children", "Children per state.",
                                   labels=["queue", "state"])
        rss = GaugeMetricFamily("rqsup_child_rss_bytes",
                                "Resident memory of a queue's children and their descendants.",
                                labels=["queue"])
        cpu = CounterMetricFamily("rqsup_child_cpu_seconds",
                                  "CPU time of a queue's children, those gone included.",
                                  labels=["queue"])
        for queue, pool in self.pools():
            counts = {"spawning": 0, "idle": 0, "busy": 0, "stopping": 0}
            total_rss, total_cpu = 0, float(pool.retired_cpu_s)
            for child in list(pool.children):
                if child is None or child.dead:
                    continue
                counts[child.state.value] = counts.get(child.state.value, 0) + 1
                total_rss += child.rss()
                total_cpu += child.cpu_seconds()
            for state, n in counts.items():
                states.add_metric([queue, state], n)
            rss.add_metric([queue], total_rss)
            # A counter never goes down (a child that died unseen takes its time along).
            seen = max(total_cpu, self._cpu_seen.get(queue, 0.0))
            self._cpu_seen[queue] = seen
            cpu.add_metric([queue], seen)
        yield from (states, rss, cpu)

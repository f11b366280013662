"""Prometheus metrics of a supervisor (or a standalone Worker).

Job counters and histograms are updated from what the worker already knows
when Redis acknowledges an outcome (no Redis call of their own, and plain
Python counts: a few hundred nanoseconds a job); the
supervisor's, from its own loops; the children's and the queues' are read
when Prometheus scrapes (collectors.py). Names follow Prometheus's rules:
one ``rqsup_`` prefix, base units, ``_total`` on counters. Labels never
carry job ids or data: ``name`` is the job name, ``reason`` one of
:data:`FAIL_REASONS`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from rqsup import __version__
from rqsup.observe.reasons import FAIL_REASONS, fail_reason

#: Durations from 1 ms to 1 h.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Event-loop lag: what matters is 1 ms to a few seconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
__all__ = ["FAIL_REASONS", "LAG_BUCKETS", "TIME_BUCKETS", "Metrics", "QueueMetrics",
           "fail_reason"]


class Metrics:
    """Every metric a supervisor exports, in its own registry. The job metrics
    are plain counters in each :class:`QueueMetrics` (no lock, no label
    lookup per job), turned into Prometheus families when a scrape comes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self._queues: dict[str, QueueMetrics] = {}
        r.register(_JobCollector(self._queues))
        self.loop_lag = Histogram("rqsup_supervisor_loop_lag_seconds",
                                  "How late the event loop runs a 50 ms timer.",
                                  buckets=LAG_BUCKETS, registry=r)
        self.redis_latency = Histogram("rqsup_supervisor_redis_latency_seconds",
                                       "Round trip of the lease renewal call.",
                                       buckets=TIME_BUCKETS, registry=r)
        self.task_restarts = Counter("rqsup_supervisor_task_restarts",
                                     "Restarts of supervised tasks after a crash.", ["task"],
                                     registry=r)
        self.up = Gauge("rqsup_supervisor_up", "1 while the supervisor runs.", registry=r)
        self.child_restarts = Counter("rqsup_child_restarts",
                                      "Children replaced, by why they went.",
                                      ["queue", "reason"], registry=r)
        Info("rqsup_build", "rqsup's version.", registry=r).info({"version": __version__})
        self.up.set(1)

    def for_queue(self, queue: str) -> QueueMetrics:
        qm = self._queues.get(queue)
        if qm is None:
            qm = self._queues[queue] = QueueMetrics(queue)
        return qm


class Count:
    """A counter the event loop adds to (one thread: no lock needed)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def inc(self, k: int = 1) -> None:
        self.n += k


class Hist:
    """A histogram over TIME_BUCKETS, observed by the event loop only."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(TIME_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(TIME_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for edge, n in zip((*TIME_BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if edge == float("inf") else repr(float(edge)), total))
        return out


class QueueMetrics:
    """One queue's job metrics: plain counts, by job name (and reason)."""

    __slots__ = ("_completed", "_failed", "_retried", "queue", "redelivered", "run", "stalled",
                 "wait")

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.wait = Hist()
        self.run = Hist()
        self.stalled = Count()
        self.redelivered = Count()
        self._completed: dict[str, int] = {}
        self._retried: dict[str, int] = {}
        self._failed: dict[tuple[str, str], int] = {}

    def completed(self, name: str) -> None:
        self._completed[name] = self._completed.get(name, 0) + 1

    def retried(self, name: str) -> None:
        self._retried[name] = self._retried.get(name, 0) + 1

    def failed(self, name: str, reason: str) -> None:
        key = (name, reason)
        self._failed[key] = self._failed.get(key, 0) + 1


class _JobCollector(Collector):
    """The job metrics of every queue, read at scrape time."""

    def __init__(self, queues: dict[str, QueueMetrics]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Any]:
        done = CounterMetricFamily("rqsup_jobs_completed", "Jobs completed.",
                                   labels=["queue", "name"])
        failed = CounterMetricFamily("rqsup_jobs_failed",
                                     "Jobs failed for good, by reason class.",
                                     labels=["queue", "name", "reason"])
        retried = CounterMetricFamily("rqsup_jobs_retried",
                                      "Failed attempts that will be retried.",
                                      labels=["queue", "name"])
        stalled = CounterMetricFamily("rqsup_jobs_stalled",
                                      "Jobs whose lease expired, requeued or failed by the sweep.",
                                      labels=["queue"])
        redelivered = CounterMetricFamily(
            "rqsup_jobs_redelivered",
            "Jobs started again after an attempt that never ended (a kill, a lost lease): "
            "at-least-once delivery made visible.", labels=["queue"])
        wait = HistogramMetricFamily("rqsup_job_wait_seconds",
                                     "From ready (added, or due) to started, first attempts.",
                                     labels=["queue"])
        run = HistogramMetricFamily("rqsup_job_run_seconds",
                                    "From handed to the processor to its end.", labels=["queue"])
        for q, qm in list(self.queues.items()):
            for name, n in list(qm._completed.items()):
                done.add_metric([q, name], n)
            for name, n in list(qm._retried.items()):
                retried.add_metric([q, name], n)
            for (name, reason), n in list(qm._failed.items()):
                failed.add_metric([q, name, reason], n)
            stalled.add_metric([q], qm.stalled.n)
            redelivered.add_metric([q], qm.redelivered.n)
            wait.add_metric([q], qm.wait.buckets(), sum_value=qm.wait.sum)
            run.add_metric([q], qm.run.buckets(), sum_value=qm.run.sum)
        yield from (done, failed, retried, stalled, redelivered, wait, run)

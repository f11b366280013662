"""Prometheus metrics of a supervisor (or a standalone Worker).

Job counters and histograms are updated from what the worker already knows
when Redis acknowledges an outcome (no Redis call of their own); the
supervisor's, from its own loops; the children's and the queues' are read
when Prometheus scrapes (collectors.py). Names follow Prometheus's rules:
one ``rqsup_`` prefix, base units, ``_total`` on counters. Labels never
carry job ids or data: ``name`` is the job name, ``reason`` one of
:data:`FAIL_REASONS`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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
    """Every metric a supervisor exports, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.completed = Counter("rqsup_jobs_completed", "Jobs completed.", ["queue", "name"],
                                 registry=r)
        self.failed = Counter("rqsup_jobs_failed", "Jobs failed for good, by reason class.",
                              ["queue", "name", "reason"], registry=r)
        self.retried = Counter("rqsup_jobs_retried", "Failed attempts that will be retried.",
                               ["queue", "name"], registry=r)
        self.stalled = Counter("rqsup_jobs_stalled",
                               "Jobs whose lease expired, requeued or failed by the sweep.",
                               ["queue"], registry=r)
        self.redelivered = Counter(
            "rqsup_jobs_redelivered",
            "Jobs started again after an attempt that never ended (a kill, a lost lease): "
            "at-least-once delivery made visible.", ["queue"], registry=r)
        self.wait = Histogram("rqsup_job_wait_seconds",
                              "From ready (added, or due) to started, first attempts.",
                              ["queue"], buckets=TIME_BUCKETS, registry=r)
        self.run = Histogram("rqsup_job_run_seconds", "From handed to the processor to its end.",
                             ["queue"], buckets=TIME_BUCKETS, registry=r)
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
        self._queues: dict[str, QueueMetrics] = {}

    def for_queue(self, queue: str) -> QueueMetrics:
        qm = self._queues.get(queue)
        if qm is None:
            qm = self._queues[queue] = QueueMetrics(self, queue)
        return qm


class QueueMetrics:
    """One queue's job metrics, with their label children looked up once."""

    __slots__ = ("_completed", "_failed", "_m", "_retried", "queue", "redelivered", "run",
                 "stalled", "wait")

    def __init__(self, m: Metrics, queue: str) -> None:
        self._m = m
        self.queue = queue
        self.wait = m.wait.labels(queue)
        self.run = m.run.labels(queue)
        self.stalled = m.stalled.labels(queue)
        self.redelivered = m.redelivered.labels(queue)
        self._completed: dict[str, Any] = {}
        self._retried: dict[str, Any] = {}
        self._failed: dict[tuple[str, str], Any] = {}

    def completed(self, name: str) -> None:
        c = self._completed.get(name)
        if c is None:
            c = self._completed[name] = self._m.completed.labels(self.queue, name)
        c.inc()

    def retried(self, name: str) -> None:
        c = self._retried.get(name)
        if c is None:
            c = self._retried[name] = self._m.retried.labels(self.queue, name)
        c.inc()

    def failed(self, name: str, reason: str) -> None:
        c = self._failed.get((name, reason))
        if c is None:
            c = self._failed[(name, reason)] = self._m.failed.labels(self.queue, name, reason)
        c.inc()

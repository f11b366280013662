"""rqsup: a Redis job queue with BullMQ's job model and a supervisor for CPU-heavy jobs.

Public names are imported lazily (PEP 562): ``import rqsup.sandbox`` in a
child process must not load redis or asyncio, and producers never load the
worker.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from rqsup.errors import (
    ActiveJobsError,
    ClosedError,
    ConfigError,
    EncodeError,
    InvalidOption,
    JobError,
    JobFailed,
    JobNotActive,
    JobNotFound,
    JobStateError,
    LeaseLost,
    MalformedJob,
    RateLimited,
    RqsupError,
    UnrecoverableError,
    WaitingChildren,
)

if TYPE_CHECKING:
    from rqsup.queue.ajob import AsyncJob
    from rqsup.queue.aqueue import AsyncQueue
    from rqsup.queue.events import Event, QueueEvents
    from rqsup.queue.flow_producer import AsyncFlowProducer, FlowProducer
    from rqsup.queue.flows import FlowJob
    from rqsup.queue.job import Job
    from rqsup.queue.queue import Queue
    from rqsup.supervisor import ActiveJob, Worker

_LAZY = {
    "AsyncJob": "rqsup.queue.ajob",
    "AsyncQueue": "rqsup.queue.aqueue",
    "Event": "rqsup.queue.events",
    "AsyncFlowProducer": "rqsup.queue.flow_producer",
    "FlowProducer": "rqsup.queue.flow_producer",
    "FlowJob": "rqsup.queue.flows",
    "QueueEvents": "rqsup.queue.events",
    "Job": "rqsup.queue.job",
    "Queue": "rqsup.queue.queue",
    "ActiveJob": "rqsup.supervisor",
    "Worker": "rqsup.supervisor",
}

__all__ = [
    "ActiveJob",
    "ActiveJobsError",
    "AsyncFlowProducer",
    "AsyncJob",
    "AsyncQueue",
    "ClosedError",
    "ConfigError",
    "EncodeError",
    "Event",
    "FlowJob",
    "FlowProducer",
    "InvalidOption",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotActive",
    "JobNotFound",
    "JobStateError",
    "LeaseLost",
    "MalformedJob",
    "Queue",
    "QueueEvents",
    "RateLimited",
    "RqsupError",
    "UnrecoverableError",
    "WaitingChildren",
    "Worker",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rqsup' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value

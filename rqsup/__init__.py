"""rqsup: a Redis job queue with BullMQ's job model and a supervisor for CPU-heavy jobs.

The producer API lives here; the worker is ``rqsup.supervisor.Worker`` (imported
lazily so producers never load it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rqsup.errors import (
    ActiveJobsError,
    EncodeError,
    InvalidOption,
    JobError,
    JobFailed,
    JobNotActive,
    JobNotFound,
    JobStateError,
    LeaseLost,
    MalformedJob,
    RqsupError,
    UnrecoverableError,
)
from rqsup.queue.aqueue import AsyncJob, AsyncQueue
from rqsup.queue.events import Event, QueueEvents
from rqsup.queue.queue import Job, Queue

if TYPE_CHECKING:
    from rqsup.supervisor import ActiveJob, Worker

__all__ = [
    "ActiveJob", "ActiveJobsError", "AsyncJob", "AsyncQueue", "EncodeError", "Event",
    "InvalidOption", "Job", "JobError", "JobFailed", "JobNotActive", "JobNotFound",
    "JobStateError", "LeaseLost", "MalformedJob", "Queue", "QueueEvents", "RqsupError",
    "UnrecoverableError", "Worker",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Worker", "ActiveJob"):
        import rqsup.supervisor

        return getattr(rqsup.supervisor, name)
    raise AttributeError(f"module 'rqsup' has no attribute {name!r}")

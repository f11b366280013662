"""Log lines about one job: the queue, the job id and the attempt in every one.

With ``log_format = "json"`` they become fields of the record (``queue``,
``job_id``, ``attempt``), so a log search by job id finds every line of it.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rqsup.worker")

#: Record attributes the JSON formatter copies into its output when present.
FIELDS = ("queue", "job_id", "attempt", "task", "error_type")


def job_line(level: int, queue: str, job_id: str, attempt: int, attempts: int, msg: str,
             *args: Any, error_type: str | None = None, exc_info: Any = None) -> None:
    """``queue q: job 7 (attempt 2/5): <msg>``."""
    if not log.isEnabledFor(level):
        return
    extra: dict[str, Any] = {"queue": queue, "job_id": job_id, "attempt": attempt}
    if error_type:
        extra["error_type"] = error_type
    log.log(level, "queue %s: job %s (attempt %d/%d): " + msg, queue, job_id, attempt,
            attempts, *args, extra=extra, exc_info=exc_info)


def seconds(ms: int) -> str:
    """A retry delay for people: 250ms, 3s, 2.5m."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 120_000:
        return f"{ms / 1000:g}s"
    return f"{ms / 60_000:.1f}m"

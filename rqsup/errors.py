"""One error root for rqsup.

Scripts return stable negative codes (:class:`Code`); :func:`raise_for_code`
turns them into the domain exceptions below, never into TypeError.
Errors raised by processors cross to the worker (and later over a pipe) as a
plain dict made by :func:`error_info`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    """Return codes shared by every Lua script (see docs/redis-schema.md)."""

    OK = 0
    JOB_NOT_FOUND = -1
    LEASE_LOST = -2
    JOB_NOT_ACTIVE = -3
    WRONG_STATE = -4
    ACTIVE_JOBS = -5
    #: The job is damaged (a bad field, or its key is no job hash): the script
    #: failed it with MalformedJob or set it aside, and wrote nothing else.
    MALFORMED = -6


class RqsupError(Exception):
    """Root of every error rqsup raises on purpose."""


class InvalidOption(RqsupError, ValueError):
    """A job, queue or worker option has a bad value; the message names it."""


class ConfigError(InvalidOption):
    """A config file is invalid. ``problems`` lists every problem found, each
    naming the file and the dotted key, so one run shows them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            message = f"{len(self.problems)} problems in the config:\n{lines}"
        super().__init__(message)


class ClosedError(RqsupError, RuntimeError):
    """A Queue, AsyncQueue or FlowProducer was used after ``close()``."""


class EncodeError(RqsupError, ValueError):
    """Job data or a result cannot be encoded as JSON; nothing was written."""


class JobError(RqsupError):
    """An operation on one job was refused."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobNotFound(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} does not exist")


class LeaseLost(JobError):
    """The caller's fencing token no longer owns the job: its writes are refused."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"lease of job {job_id} was lost (another token owns it)")


class JobNotActive(LeaseLost):
    """The job is no longer active at all (finished, requeued or removed)."""

    def __init__(self, job_id: str) -> None:
        JobError.__init__(self, job_id, f"job {job_id} is not active any more")


class JobStateError(JobError):
    """The job is in a state where the operation makes no sense."""

    def __init__(self, job_id: str, operation: str, state: str) -> None:
        super().__init__(job_id, f"cannot {operation} job {job_id}: it is {state}")
        self.operation = operation
        self.state = state


class ActiveJobsError(RqsupError):
    """Obliterate refused because jobs are still running."""


class MalformedJob(JobError):
    """A job hash in Redis does not have the shape rqsup writes."""

    def __init__(self, job_id: str, detail: str) -> None:
        super().__init__(job_id, f"job {job_id} is malformed: {detail}")
        self.detail = detail


class UnrecoverableError(RqsupError):
    """Raised by a processor to fail the job at once, skipping remaining attempts."""


class JobCancelled(UnrecoverableError):
    """The job was cancelled (``queue.cancel``, ``worker.cancel_job``): rqsup
    fails it with this and the reason, without a retry. A processor may raise
    it too, to end a job it saw cancelled (``job.cancelled``)."""


class DelayedError(RqsupError):
    """Raised by a processor after ``job.move_to_delayed(when)``: the job runs
    again then, without spending an attempt (BullMQ's DelayedError)."""


class WaitingError(RqsupError):
    """Raised by a processor after ``job.move_to_wait()``: the job goes back
    to wait without spending an attempt (BullMQ's WaitingError)."""


#: A manual limit longer than this is surely a mistake (and NaN never compares).
MAX_RATE_LIMIT_DELAY_S = 86_400.0


class RateLimited(RqsupError):
    """Raised by a processor (say after an upstream 429): the job goes back to
    wait without spending an attempt, and the whole queue claims nothing for
    ``delay`` seconds, across every supervisor."""

    def __init__(self, delay: float, message: str = "") -> None:
        if (isinstance(delay, bool) or not isinstance(delay, int | float)
                or not 0 <= delay <= MAX_RATE_LIMIT_DELAY_S):
            raise InvalidOption(f"RateLimited delay must be seconds from 0 to "
                                f"{MAX_RATE_LIMIT_DELAY_S:g} (a day), got {delay!r}")
        super().__init__(message or f"rate limited for {delay:g}s")
        self.delay_s = float(delay)


class WaitingChildren(RqsupError):
    """Raised by a processor after ``job.add_children(...)`` (step jobs): the job
    is neither completed nor failed; it moves to waiting-children and runs
    again once its children have finished (at once if they already have)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or "waiting for children")


class JobFailed(RqsupError):
    """A waited-for job ended failed; carries the remote error."""

    def __init__(
        self, job_id: str, error_type: str, message: str, stacktrace: str | None
    ) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message
        self.stacktrace = stacktrace


class ScriptError(RqsupError):
    """A script answered with a code rqsup does not know (a version mismatch)."""


def raise_for_code(code: int, job_id: str = "", operation: str = "", state: str = "") -> None:
    """Turn a script's negative return code into a typed exception."""
    if code >= 0:
        return
    if code == Code.JOB_NOT_FOUND:
        raise JobNotFound(job_id)
    if code == Code.LEASE_LOST:
        raise LeaseLost(job_id)
    if code == Code.JOB_NOT_ACTIVE:
        raise JobNotActive(job_id)
    if code == Code.WRONG_STATE:
        raise JobStateError(job_id, operation, state or "in another state")
    if code == Code.ACTIVE_JOBS:
        raise ActiveJobsError("the queue has active jobs; pass force=True to obliterate anyway")
    if code == Code.MALFORMED:
        raise MalformedJob(job_id, state or "its key is not a job hash")
    raise ScriptError(f"unknown return code {code} from {operation or 'script'}")


def error_info(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as plain data (type, message, a bounded stack trace,
    and ``control``: what it asks of the worker instead of a plain failure), the
    same in every mode: a child sends exactly this over its pipe
    (rqsup.sandbox.protocol.error_data). Control-flow exceptions are told by
    class."""
    from rqsup.sandbox.protocol import error_data

    if isinstance(exc, RateLimited):
        return error_data(exc, control="rate_limited", delay_s=exc.delay_s)
    if isinstance(exc, WaitingChildren):
        return error_data(exc, control="waiting_children")
    if isinstance(exc, UnrecoverableError):  # JobCancelled too
        return error_data(exc, control="unrecoverable")
    if isinstance(exc, DelayedError):
        return error_data(exc, control="delayed")
    if isinstance(exc, WaitingError):
        return error_data(exc, control="waiting")
    return error_data(exc)

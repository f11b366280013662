"""The bounded class of a failure (a metric label), without importing
prometheus-client: the worker computes it on every failure."""

from __future__ import annotations

#: The bounded classes of a failure for good.
FAIL_REASONS = ("error", "timeout", "crash", "memory", "stalled", "cancelled", "unrecoverable")
_BY_TYPE = {"JobTimedOut": "timeout", "ChildCrashed": "crash", "ChildProtocolError": "crash",
            "MemoryLimitExceeded": "memory", "Stalled": "stalled", "JobCancelled": "cancelled",
            "UnrecoverableError": "unrecoverable", "MalformedJob": "unrecoverable",
            "EncodeError": "unrecoverable", "ResultTooLarge": "unrecoverable"}


def fail_reason(error_type: str, message: str = "") -> str:
    """The bounded class of a failure, from the error's type."""
    reason = _BY_TYPE.get(error_type)
    if reason is None and message.startswith("child "):
        return "crash"  # a child killed by a signal or exited: its job's error says so
    return reason or "error"

"""How a child's job can end badly, as the supervisor sees it: the errors
its handle raises, and an exit status in words."""

from __future__ import annotations

import signal
from typing import Any

from rqsup.sandbox.runtime import EXIT_BOOT_FAILED, EXIT_PROTOCOL


class ChildCrashed(Exception):
    """The child died while running the job (its reason names the exit code or signal)."""


class MemoryLimitExceeded(ChildCrashed):
    """The child's process tree went over the hard memory limit; it was killed."""


class ChildProtocolError(ChildCrashed):
    """The child sent what the protocol does not allow; it was killed."""


class ChildJobError(Exception):
    """The processor raised in the child; ``info`` is the error as the child sent it."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("message", ""))
        self.info = info


def describe_exit(code: int | None) -> str:
    if code is None:
        return "child exited (status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"child killed by {name}"
    if code == EXIT_BOOT_FAILED:
        return f"child exited with code {code} (its processor did not load)"
    if code == EXIT_PROTOCOL:
        return f"child exited with code {code} (it could not read the supervisor's frames)"
    return f"child exited with code {code}"


__all__ = ["ChildCrashed", "ChildJobError", "ChildProtocolError", "MemoryLimitExceeded",
           "describe_exit"]

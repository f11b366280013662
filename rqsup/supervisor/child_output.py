"""A child's stdout and stderr: read from the event loop, logged line by line
with the queue, the slot and the job, within caps (a child that prints
without end must not flood the supervisor's log or slow its loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

out_log = logging.getLogger("rqsup.child")


@dataclass(frozen=True)
class ChildLimits:
    """Caps on what a child may send (``[queues.sandbox]``)."""

    max_result_bytes: int = 16 << 20
    max_output_bytes: int = 1 << 20   # its stdout + stderr per job
    max_output_line: int = 16 << 10
    max_log_line: int = 16 << 10


class ChildOutput:
    def __init__(self, queue: str, slot: int, fd: int, limits: ChildLimits,
                 job: Callable[[], str | None]) -> None:
        self.queue = queue
        self.slot = slot
        self.fd = fd
        self.limits = limits
        self._job = job
        self._partial = b""
        self._bytes = 0
        self._dropped = 0

    def job_started(self) -> None:
        self._bytes = self._dropped = 0

    def job_ended(self, job_id: str) -> None:
        if self._dropped:
            out_log.warning("child %s#%d job %s: %d bytes of output dropped (over the cap of "
                            "%d bytes per job: max_output)", self.queue, self.slot, job_id,
                            self._dropped, self.limits.max_output_bytes)

    def on_readable(self) -> None:
        """One read per wake-up: a flood is drained without holding the loop."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.fd)
            if self._partial:
                self._line(self._partial)
                self._partial = b""
            return
        data = self._partial + chunk if self._partial else chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._line(line)
        if len(self._partial) > self.limits.max_output_line:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        """One line, within the caps (counted per job)."""
        self._bytes += len(raw) + 1
        if self._bytes > self.limits.max_output_bytes:
            self._dropped += len(raw) + 1
            return
        cap = self.limits.max_output_line
        text = raw[:cap].decode("utf-8", "replace").rstrip("\r")
        if len(raw) > cap:
            text += f"... [cut: {len(raw)} bytes]"
        job = self._job()
        out_log.info("child %s#%d%s: %s", self.queue, self.slot, f" job {job}" if job else "",
                     text)

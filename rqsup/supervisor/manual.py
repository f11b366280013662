"""Manual processing, as BullMQ's ``Worker.getNextJob``: the caller takes a
job, works on it however it likes, and moves it on itself.

``Worker(queue, None, url=...)`` is a worker without a processor. Its
``get_next_job(token)`` claims one job with a lease (``lease_s``) and
returns a :class:`ManualJob`; the caller then calls ``move_to_completed``,
``move_to_failed``, ``move_to_delayed`` or ``move_to_wait``, and
``extend_lock`` while it works (nothing renews the lease for it). Every
write is fenced by the lease rqsup took: a job whose lease ran out and that
another worker took refuses them (LeaseLost). ``token`` is the caller's name
for the claim, as in BullMQ: each call must pass the token the job was taken
with (another one is refused, LeaseLost). ``worker.start_stall_check()``
runs the stall sweep for jobs whose lease expired.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rqsup import backoff
from rqsup.errors import InvalidOption, LeaseLost, error_info, raise_for_code
from rqsup.queue import codec
from rqsup.queue.options import epoch_ms
from rqsup.queue.record import JobRecord, fields_of
from rqsup.supervisor import maintenance

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker


@dataclass(eq=False)
class ManualJob(JobRecord):
    """A job taken by ``get_next_job``; its methods move it on, fenced by its lease."""

    worker: Worker = field(default=None, repr=False)  # type: ignore[assignment]
    #: rqsup's fencing token of this claim, and the caller's token for it.
    lease_token: str = ""
    user_token: str = ""
    #: Set by extend_lock when the job was cancelled (queue.cancel) meanwhile.
    cancel_reason: str | None = None

    def __repr__(self) -> str:
        return f"ManualJob(id={self.id!r}, name={self.name!r}, queue={self.worker.queue_name!r})"

    def _check(self, token: str) -> None:
        if token != self.user_token and token != self.lease_token:
            raise LeaseLost(self.id)

    def _refused(self, code: int, operation: str) -> None:
        if code < 0:
            raise_for_code(code, self.id, operation)

    async def move_to_completed(self, value: Any, token: str,
                                fetch_next: bool = False) -> ManualJob | None:
        """Complete the job with ``value``; with ``fetch_next``, the next job
        (taken in the same call, under the same token) or None."""
        self._check(token)
        w = self.worker
        encoded = codec.encode(value, f"result of job {self.id}")
        keep = self._options().completed_retention
        # Claim the next job only once this completion was accepted: a claim
        # in the same call would be left active if the lease was lost.
        codes, _claim = await w.driver.execute(w.core.script(
            "complete", 1, 0, w.worker_id, w.lease_ms,
            self.id, self.lease_token, encoded, keep["count"], keep["age_ms"]))
        self._refused(int(codes[0]), "complete")
        return await w.get_next_job(token, block=False) if fetch_next else None

    def _options(self) -> Any:
        """The job's options over the worker's job_defaults, as a processor's."""
        w = self.worker
        return self.options_over(w.default_opts) if w.default_opts else self.options

    def _attempts(self) -> int:
        w = self.worker
        return int(self._options().attempts if "attempts" in w.default_opts else self.attempts)

    async def move_to_failed(self, error: BaseException | str, token: str,
                             fetch_next: bool = False) -> ManualJob | None:
        """Fail this attempt with ``error``: retried by the job's attempts and
        backoff (an UnrecoverableError: not at all), as if a processor raised."""
        self._check(token)
        w = self.worker
        info = error_info(error if isinstance(error, BaseException) else Exception(str(error)))
        message, etype = str(info["message"]), str(info["type"])
        opts = self._options()
        attempt, attempts = self.attempts_made + 1, self._attempts()
        delay_ms = -1
        if info.get("control") != "unrecoverable" and attempt < attempts:
            try:
                delay_ms = backoff.retry_delay_ms(opts.backoff, attempt, etype, message,
                                                  self.raw.get("data"), w.strategies)
            except Exception as exc:  # a bad or unknown custom strategy: fail, say why
                message, delay_ms = f"{message}; no retry: {exc}", -1
        keep = opts.failed_retention
        [code] = await w.driver.execute(w.core.script(
            "fail", 1, self.id, self.lease_token, message[:4000], etype,
            str(info.get("stacktrace") or ""), delay_ms, keep["count"], keep["age_ms"],
            attempts if "attempts" in w.default_opts else ""))
        self._refused(int(code), "fail")
        return await w.get_next_job(token, block=False) if fetch_next else None

    async def move_to_delayed(self, when: float | datetime, token: str) -> None:
        """Run again at ``when`` (epoch seconds or a datetime), no attempt spent."""
        self._check(token)
        await self._move_back(epoch_ms(when, "when") or 1)

    async def move_to_wait(self, token: str) -> None:
        """Back to wait, no attempt spent."""
        self._check(token)
        await self._move_back(0)

    async def _move_back(self, due_ms: int) -> None:
        w = self.worker
        code = await w.driver.execute(w.core.script("move_back", self.id, self.lease_token,
                                                    due_ms))
        self._refused(int(code), "move")

    async def extend_lock(self, token: str, duration: float) -> None:
        """Hold the lease ``duration`` seconds from now (BullMQ's extendLock)."""
        self._check(token)
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            raise InvalidOption(f"extend_lock duration must be seconds > 0, got {duration!r}")
        w = self.worker
        lost, cancelled = await w.driver.execute(w.core.script(
            "renew", round(duration * 1000), self.id, self.lease_token, ""))
        if lost:
            raise LeaseLost(self.id)
        if cancelled:  # queue.cancel reached this job: the caller decides what to do
            self.cancel_reason = codec.text(cancelled[1])

    async def update_progress(self, value: Any) -> None:
        w = self.worker
        code = await w.driver.execute(w.core.script(
            "progress", self.id, self.lease_token, codec.encode(value, "progress")))
        self._refused(int(code), "report progress of")

    async def log(self, line: str) -> None:
        w = self.worker
        keep = self._options().keep_logs
        await w.driver.execute(w.core.script("log", self.id, self.lease_token, keep,
                                             time.monotonic_ns(), str(line)))


def _first(w: Worker, claim: Any, token: str) -> ManualJob | None:
    """The job of a claim reply (``[next_delayed_ms, [id, token, hash]...]``)."""
    if len(claim) < 2:
        return None
    job_id, lease, flat = claim[1]
    return ManualJob(codec.text(job_id), fields_of(flat), worker=w,
                     lease_token=codec.text(lease), user_token=token)


async def get_next_job(w: Worker, token: str, block: bool = True) -> ManualJob | None:
    """Take the next job, or None; ``block``: wait up to the worker's
    ``block_timeout_s`` for one (on the queue's marker, no polling)."""
    if not isinstance(token, str) or not token:
        raise InvalidOption(f"get_next_job needs a token (a non-empty str), got {token!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (w.block_timeout_s if block else 0)
    while True:
        # idle_ms 0: a manual worker is never handed jobs at add time.
        claim = await w.driver.execute(w.core.script("claim", 1, w.worker_id, w.lease_ms, 0))
        job = _first(w, claim, token)
        if job is not None or not block:
            return job
        left = deadline - loop.time()
        if left <= 0:
            return None
        next_due = int(claim[0])
        wait_s = left if next_due < 0 else min(left, max(next_due / 1000, 0.001))
        await w.block_client.bzpopmin([w.core.keys.marker], max(wait_s, 0.001))


def start_stall_check(w: Worker) -> asyncio.Task[None]:
    """The stall sweep as a task of its own (manual processing: no run())."""
    return asyncio.create_task(maintenance.sweep_stalled(w), name=f"rqsup stall {w.queue_name}")


__all__ = ["ManualJob", "get_next_job", "start_stall_check"]

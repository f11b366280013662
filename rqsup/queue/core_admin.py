"""Queue-wide admin and one-job operations of :class:`rqsup.queue.core.QueueCore`.

A mixin, so that core.py stays about adding and reading; the same rules
hold: generators of requests, no I/O of their own.
"""

from __future__ import annotations

from typing import Any

from rqsup.errors import InvalidOption, raise_for_code
from rqsup.keys import QueueKeys
from rqsup.queue import codec
from rqsup.queue import options as options_mod
from rqsup.queue.scripts import Command, Op, Script

#: Public state names, in the order counts() reports them.
STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")
FINISHED_STATES = ("completed", "failed")
#: Jobs per admin script call (drain, promote, retry, obliterate).
ADMIN_CHUNK = 1000


class AdminOps:
    """Operations that change a queue or one of its jobs."""

    keys: QueueKeys
    max_data_bytes: int

    def script(self, name: str, *args: Any) -> Script:
        raise NotImplementedError  # QueueCore.script

    # -- queue-wide admin -----------------------------------------------------

    def op_limits(
        self, *, max_jobs: int | None = None, duration_s: float | None = None,
        concurrency: int | None = None, manual_s: float | None = None,
        clear_rate: bool = False, clear_concurrency: bool = False,
    ) -> Op[dict[str, Any]]:
        """Read or change the queue-wide limits (limits.lua); 0 never means
        "unlimited" here: clearing is explicit."""
        rate: list[Any] = ["", ""]
        if clear_rate:
            rate = ["0", ""]
        elif max_jobs is not None:
            if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
                raise InvalidOption(f"rate limit max must be an int >= 1, got {max_jobs!r}")
            window = options_mod.seconds_to_ms("rate limit duration", duration_s)
            if not window:
                raise InvalidOption(
                    f"rate limit duration must be > 0 seconds, got {duration_s!r}")
            rate = [max_jobs, window]
        cap: Any = ""
        if clear_concurrency:
            cap = "0"
        elif concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
                raise InvalidOption(f"global concurrency must be an int >= 1, got {concurrency!r}")
            cap = concurrency
        manual: Any = ""
        if manual_s is not None:
            manual = options_mod.seconds_to_ms("rate_limit delay", manual_s)
        lmax, window_ms, conc, wait_ms = yield self.script("limits", *rate, cap, manual)
        return {
            "max": None if int(lmax) < 0 else int(lmax),
            "duration_s": None if int(window_ms) < 0 else int(window_ms) / 1000,
            "concurrency": None if int(conc) < 0 else int(conc),
            "limited_for_s": max(0, int(wait_ms)) / 1000,
        }

    def op_pause(self, paused: bool) -> Op[None]:
        yield self.script("pause", 1 if paused else 0)

    def op_drain(self, delayed: bool) -> Op[int]:
        total = 0
        while True:
            n = int((yield self.script("drain", 1 if delayed else 0, ADMIN_CHUNK)))
            total += n
            if n < ADMIN_CHUNK:
                return total

    def op_clean(self, grace_ms: int, limit: int, state: str) -> Op[list[str]]:
        if state not in STATES or state == "active":
            allowed = [s for s in STATES if s != "active"]
            raise InvalidOption(f"clean state must be one of {allowed}, got {state!r}")
        if limit < 1:
            raise InvalidOption(f"clean limit must be >= 1, got {limit}")
        raw = yield self.script("clean", state, grace_ms, limit)
        return [codec.text(i) for i in raw]

    def op_obliterate(self, force: bool) -> Op[None]:
        while True:
            n = int((yield self.script("obliterate", 1 if force else 0, ADMIN_CHUNK)))
            raise_for_code(n)
            if n == 0:
                break
        # Strays: job hashes in no structure (planted by hand, older versions).
        cursor: Any = 0
        while True:
            scan = ("SCAN", cursor, "MATCH", self.keys.glob(), "COUNT", 1000)
            cursor, found = yield Command(scan, route=self.keys.meta)
            if found:
                yield Command(("UNLINK", *found))
            if int(cursor) == 0:
                return

    def op_retry_jobs(self, state: str, count: int | None, timestamp_ms: int | None = None,
                      reset_attempts_made: bool = False) -> Op[int]:
        """Retry finished jobs, oldest first (BullMQ's retryJobs: those
        finished at or before ``timestamp_ms`` when given; attempts kept
        unless ``reset_attempts_made``)."""
        if state not in FINISHED_STATES:
            raise InvalidOption(f"retry state must be 'failed' or 'completed', got {state!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise InvalidOption(f"retry count must be an int >= 1, got {count!r}")
        if timestamp_ms is not None and (isinstance(timestamp_ms, bool)
                                         or not isinstance(timestamp_ms, int)):
            raise InvalidOption(f"retry timestamp must be ms since the epoch, got {timestamp_ms!r}")
        total = 0
        while count is None or total < count:
            step = ADMIN_CHUNK if count is None else min(ADMIN_CHUNK, count - total)
            _code, n = yield self.script("retry", state, "", step, int(reset_attempts_made), 0,
                                         "" if timestamp_ms is None else timestamp_ms)
            total += int(n)
            if int(n) < step:
                break
        return total

    def op_promote_jobs(self, count: int | None) -> Op[int]:
        total = 0
        while count is None or total < count:
            step = ADMIN_CHUNK if count is None else min(ADMIN_CHUNK, count - total)
            _code, n = yield self.script("promote", "", step)
            total += int(n)
            if int(n) < step:
                break
        return total

    def op_set_max_events(self, max_events: int) -> Op[None]:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 100:
            raise InvalidOption(f"max_events must be an int >= 100, got {max_events!r}")
        yield Command(("HSET", self.keys.meta, "max_events", max_events))

    def op_trim_events(self, max_len: int) -> Op[int]:
        """Trim the event stream to exactly ``max_len`` newest entries (no
        floor, as BullMQ's trimEvents); the number removed."""
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
            raise InvalidOption(f"trim_events max_len must be an int >= 0, got {max_len!r}")
        return int((yield Command(("XTRIM", self.keys.events, "MAXLEN", max_len))))

    def op_publish_event(self, name: str, fields: Any) -> Op[str]:
        """A custom event on the queue's stream (BullMQ's publishEvent)."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidOption(f"an event name must be a non-empty str, got {name!r}")
        flat: list[str] = []
        for key, value in dict(fields or {}).items():
            if not isinstance(key, str) or not key or key == "event":
                raise InvalidOption(f"event field names are non-empty str other than 'event', "
                                    f"got {key!r}")
            flat += [key, value if isinstance(value, str) else codec.encode(value, key)]
        return codec.text((yield self.script("publish", name, *flat)))

    # -- one job --------------------------------------------------------------

    def _job_reply(self, job_id: str, operation: str, reply: Any) -> str:
        code, detail = int(reply[0]), codec.text(reply[1])
        raise_for_code(code, job_id, operation, detail)
        return detail

    def op_change_delay(self, job_id: str, delay: Any) -> Op[None]:
        delay_ms = options_mod.seconds_to_ms("delay", delay)
        reply = yield self.script("change_delay", job_id, delay_ms)
        self._job_reply(job_id, "change the delay of", reply)

    def op_change_priority(self, job_id: str, priority: int, lifo: bool) -> Op[None]:
        options_mod.build({"priority": priority, "lifo": lifo}, {})
        reply = yield self.script("change_priority", job_id, priority, 1 if lifo else 0)
        self._job_reply(job_id, "change the priority of", reply)

    def op_promote(self, job_id: str) -> Op[None]:
        reply = yield self.script("promote", job_id, 1)
        self._job_reply(job_id, "promote", reply)

    def op_retry(self, job_id: str, state: str, reset_attempts_made: bool = False,
                 reset_attempts_started: bool = False) -> Op[None]:
        if state not in FINISHED_STATES:
            raise InvalidOption(f"retry state must be 'failed' or 'completed', got {state!r}")
        reply = yield self.script("retry", state, job_id, 1, int(reset_attempts_made),
                                  int(reset_attempts_started), "")
        self._job_reply(job_id, f"retry (as {state})", reply)

    def op_cancel(self, job_id: str, reason: str | None) -> Op[str]:
        """Cancel a job (cancel.lua): "signalled" when it runs (its worker
        stops it and fails it), "failed" when it was not running (failed at
        once); JobNotFound, or JobStateError for a finished job."""
        if reason is not None and not isinstance(reason, str):
            raise InvalidOption(f"a cancel reason is a str, got {reason!r}")
        text = (reason or "cancelled")[:4000]
        keep = options_mod.DEFAULT_KEEP_FAILED
        reply = yield self.script("cancel", job_id, text, keep["count"], keep["age_ms"],
                                  self.keys.cancel_channel)
        code = int(reply[0])
        if code < 0:
            raise_for_code(code, job_id, "cancel", codec.text(reply[1]))
        return "signalled" if code == 1 else "failed"

    def op_remove(self, job_id: str) -> Op[None]:
        reply = yield self.script("remove", job_id)
        self._job_reply(job_id, "remove", reply)

    def op_update_data(self, job_id: str, data: Any) -> Op[None]:
        encoded = codec.encode_data(data, f"data of job {job_id}", self.max_data_bytes)
        code = yield self.script("update_data", job_id, encoded)
        raise_for_code(int(code), job_id, "update the data of")

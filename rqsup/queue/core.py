"""Every queue operation, written once as a generator of requests.

:class:`QueueCore` builds script arguments and parses replies; the sync
``Queue`` and the asyncio ``AsyncQueue`` only drive these generators.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rqsup.errors import EncodeError, InvalidOption, JobNotFound, raise_for_code
from rqsup.keys import QUEUE_SUFFIXES, QueueKeys
from rqsup.queue import codec
from rqsup.queue import options as options_mod
from rqsup.queue.record import JobRecord, fields_of
from rqsup.queue.scripts import Batch, Command, Op, Script

#: Public state names, in the order counts() reports them.
STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")
FINISHED_STATES = ("completed", "failed")
#: Jobs per add script call: large enough to amortise the call, small enough
#: not to block Redis for long (~5 ms).
ADD_CHUNK = 500
#: Jobs per admin script call (drain, promote, retry, obliterate).
ADMIN_CHUNK = 1000


class AddSpec:
    """One job to add: validated and encoded before anything is written."""

    __slots__ = ("args", "name")

    def __init__(
        self,
        name: str,
        data: Any,
        opts: Mapping[str, Any],
        defaults: Mapping[str, Any],
        cache: dict[bytes, tuple[Any, ...]] | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise InvalidOption(f"job name must be a non-empty string, got {name!r}")
        # Jobs of a bulk add usually share their options: validate and encode
        # them once (a custom job_id makes each job's options unique).
        key = codec.encode(opts, "job options").encode() if cache is not None else b""
        shared = cache.get(key) if cache is not None else None
        if shared is None:
            job_id, o = options_mod.build(opts, defaults)
            shared = (job_id or "", codec.encode(o.to_json_dict(), "job options"),
                      o.delay_ms, o.priority, 1 if o.lifo else 0, o.attempts)
            if cache is not None and not job_id:
                cache[key] = shared
        self.name = name
        self.args = (shared[0], name, codec.encode(data, f"data of job {name!r}"), *shared[1:])


class QueueCore:
    """Names, keys and operations of one queue; no I/O of its own."""

    def __init__(
        self, name: str, prefix: str = "rqsup", default_job_options: Mapping[str, Any] | None = None
    ) -> None:
        self.keys = QueueKeys(prefix, name)
        self.name = name
        self.prefix = prefix
        self.key_list: tuple[str, ...] = (
            *(self.keys.key(s) for s in QUEUE_SUFFIXES),
            self.keys.job_prefix,
        )
        defaults = dict(default_job_options or {})
        if "job_id" in defaults:
            raise InvalidOption("job_id cannot be a queue-wide default")
        options_mod.build({}, defaults)  # validate now, not at the first add
        self.default_job_options = defaults

    def script(self, name: str, *args: Any) -> Script:
        return Script(name, self.key_list, args)

    # -- adding ---------------------------------------------------------------

    def spec(self, name: str, data: Any, opts: Mapping[str, Any]) -> AddSpec:
        return AddSpec(name, data, opts, self.default_job_options)

    def specs_from_bulk(self, jobs: Iterable[Any]) -> list[AddSpec]:
        """Accept ``{"name", "data", "opts"}`` mappings or ``(name, data[, opts])`` tuples."""
        specs = []
        cache: dict[bytes, tuple[Any, ...]] = {}
        for i, item in enumerate(jobs):
            if isinstance(item, Mapping):
                extra = set(item) - {"name", "data", "opts"}
                if extra:
                    raise InvalidOption(f"bulk job #{i} has unknown keys {sorted(extra)}")
                name, data, opts = item.get("name"), item.get("data"), item.get("opts") or {}
            elif isinstance(item, tuple) and len(item) in (2, 3):
                name, data = item[0], item[1]
                opts = item[2] if len(item) == 3 else {}
            else:
                raise InvalidOption(f"bulk job #{i} must be a mapping or a tuple, got {item!r}")
            try:
                spec = AddSpec(name, data, opts, self.default_job_options, cache)  # type: ignore[arg-type]
                specs.append(spec)
            except (InvalidOption, EncodeError) as exc:
                raise type(exc)(f"bulk job #{i}: {exc}") from None
        return specs

    def op_add(self, specs: list[AddSpec]) -> Op[list[tuple[str, bool, str]]]:
        """Add jobs; returns (id, created, added event id) per job."""
        out: list[tuple[str, bool, str]] = []
        chunks = [specs[i : i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)]
        # Send up to 8 chunks per round trip: fewer waits, bounded pipeline size.
        for g in range(0, len(chunks), 8):
            reqs = []
            for chunk in chunks[g : g + 8]:
                args: list[Any] = [len(chunk)]
                for s in chunk:
                    args.extend(s.args)
                reqs.append(self.script("add", *args))
            replies = yield (reqs[0] if len(reqs) == 1 else Batch(reqs))
            if len(reqs) == 1:
                replies = [replies]
            for reply in replies:
                for job_id, created, event_id in reply:
                    out.append((codec.text(job_id), bool(created), codec.text(event_id)))
        return out

    # -- reading --------------------------------------------------------------

    def op_get_record(self, job_id: str) -> Op[JobRecord | None]:
        raw = yield Command(("HGETALL", self.keys.job(job_id)))
        fields = fields_of(raw)
        return JobRecord(job_id, fields) if fields else None

    def op_require_record(self, job_id: str) -> Op[JobRecord]:
        rec = yield from self.op_get_record(job_id)
        if rec is None:
            raise JobNotFound(job_id)
        return rec

    def op_get_records(self, state: str, start: int = 0, end: int = -1) -> Op[list[JobRecord]]:
        """Jobs in one state, oldest first for lists/zsets as stored (wait: next to run first)."""
        if state not in STATES:
            raise InvalidOption(f"unknown state {state!r}; known: {', '.join(STATES)}")
        if state == "wait":
            # The wait list pops from the right: show the next to run first.
            raw = yield Command(("LRANGE", self.keys.wait, -(end + 1) if end >= 0 else 0,
                                 -(start + 1)))
            ids = [codec.text(i) for i in reversed(raw)]
        else:
            raw = yield Command(("ZRANGE", self.keys.key(state), start, end))
            ids = [codec.text(i) for i in raw]
        if not ids:
            return []
        hashes = yield Batch([Command(("HGETALL", self.keys.job(i))) for i in ids])
        return [JobRecord(i, fields_of(h)) for i, h in zip(ids, hashes, strict=True) if h]

    def op_counts(self) -> Op[dict[str, int]]:
        reqs = [
            Command(("LLEN", self.keys.wait) if s == "wait" else ("ZCARD", self.keys.key(s)))
            for s in STATES
        ]
        replies = yield Batch(reqs)
        return {s: int(n) for s, n in zip(STATES, replies, strict=True)}

    def op_states(self, job_ids: list[str]) -> Op[list[str]]:
        reply = yield self.script("state", *job_ids)
        return [codec.text(s) for s in reply]

    def op_state(self, job_id: str) -> Op[str]:
        states = yield from self.op_states([job_id])
        if states[0] == "missing":
            raise JobNotFound(job_id)
        return states[0]

    def op_logs(self, job_id: str, start: int = 0, end: int = -1) -> Op[list[str]]:
        raw = yield Command(("LRANGE", self.keys.logs(job_id), start, end))
        return [codec.text(x) for x in raw]

    def op_is_paused(self) -> Op[bool]:
        raw = yield Command(("HEXISTS", self.keys.meta, "paused"))
        return bool(raw)

    # -- queue-wide admin -----------------------------------------------------

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
            cursor, found = yield Command(scan)
            if found:
                yield Command(("UNLINK", *found))
            if int(cursor) == 0:
                return

    def op_retry_jobs(self, state: str, count: int | None) -> Op[int]:
        if state not in FINISHED_STATES:
            raise InvalidOption(f"retry state must be 'failed' or 'completed', got {state!r}")
        total = 0
        while count is None or total < count:
            step = ADMIN_CHUNK if count is None else min(ADMIN_CHUNK, count - total)
            _code, n = yield self.script("retry", state, "", step)
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

    def op_retry(self, job_id: str, state: str) -> Op[None]:
        if state not in FINISHED_STATES:
            raise InvalidOption(f"retry state must be 'failed' or 'completed', got {state!r}")
        reply = yield self.script("retry", state, job_id, 1)
        self._job_reply(job_id, f"retry (as {state})", reply)

    def op_remove(self, job_id: str) -> Op[None]:
        reply = yield self.script("remove", job_id)
        self._job_reply(job_id, "remove", reply)

    def op_update_data(self, job_id: str, data: Any) -> Op[None]:
        encoded = codec.encode(data, f"data of job {job_id}")
        code = yield self.script("update_data", job_id, encoded)
        raise_for_code(int(code), job_id, "update the data of")

    def op_finished(self, job_id: str) -> Op[JobRecord | None]:
        """The job's record when it is completed or failed, else None (for waiters)."""
        states = yield from self.op_states([job_id])
        if states[0] == "missing":
            raise JobNotFound(job_id)
        if states[0] not in FINISHED_STATES:
            return None
        rec = yield from self.op_get_record(job_id)
        if rec is not None:
            rec.raw["_state"] = states[0]
        return rec



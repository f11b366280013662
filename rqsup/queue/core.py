"""Every queue operation, written once as a generator of requests.

:class:`QueueCore` builds script arguments and parses replies; the sync
``Queue`` and the asyncio ``AsyncQueue`` only drive these generators.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from rqsup.errors import EncodeError, InvalidOption, JobNotFound
from rqsup.keys import QueueKeys
from rqsup.queue import codec, tracehook
from rqsup.queue import options as options_mod
from rqsup.queue.core_admin import FINISHED_STATES, STATES, AdminOps
from rqsup.queue.deps import DepsOps
from rqsup.queue.history import HistoryOps
from rqsup.queue.reads import ReadOps
from rqsup.queue.record import JobRecord, fields_of
from rqsup.queue.scripts import SCRIPTS, Batch, Command, Op, Script

#: Jobs per add script call: large enough to amortise the call, small enough
#: not to block Redis for long (~5 ms).
ADD_CHUNK = 500
ADD_CHUNKS_PER_CALL = 8
#: What add.lua did with each job (its second reply value).
ADD_OUTCOMES = {1: "created", 0: "duplicated", 2: "deduplicated", 3: "debounced"}
#: get_jobs reads past ids whose hash is gone at most this many times per state.
GET_JOBS_FILL_ROUNDS = 16


class Added(NamedTuple):
    """One job of an add: its id (for a deduplicated add, the kept job's),
    ``outcome`` (an :data:`ADD_OUTCOMES` value), the ``added`` event id (only
    when created) and the job's hash as stored (for a created job, built from
    what was sent and the timestamp the script returned)."""

    id: str
    outcome: str
    event_id: str
    fields: dict[str, str]


def _dedup_mode(dedup: Mapping[str, Any]) -> str:
    """add.lua's mode argument: the mode, then its flags ("ttl+extend")."""
    flags = dedup.get("flags") or ()
    short = {"keep_last_if_active": "keep_last"}
    return str(dedup.get("mode", "")) + "".join("+" + short.get(f, f) for f in flags)


def _add_argv(chunk: list[AddSpec]) -> list[Any]:
    """add.lua's ARGV for one chunk: N, then each job's 11 values."""
    args: list[Any] = [len(chunk)]
    for s in chunk:
        args.extend(s.args)
    return args


def added_from(specs: list[AddSpec], entries: list[Any]) -> list[Added]:
    """What add.lua did with each job, from its reply entries."""
    out = []
    for spec, entry in zip(specs, entries, strict=True):
        outcome = ADD_OUTCOMES[int(entry[1])]
        created = outcome == "created"
        fields = spec.stored(int(entry[3])) if created else fields_of(entry[3])
        out.append(Added(codec.text(entry[0]), outcome, codec.text(entry[2]), fields))
    return out


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
        max_data: int = codec.DEFAULT_MAX_DATA_BYTES,
    ):
        if not isinstance(name, str) or not name:
            raise InvalidOption(f"job name must be a non-empty string, got {name!r}")
        # Jobs of a bulk add usually share their options: validate and encode
        # them once (a custom job_id makes each job's options unique).
        key = codec.encode(opts, "job options").encode() if cache is not None else b""
        shared = cache.get(key) if cache is not None else None
        if shared is None:
            job_id, o = options_mod.build(opts, defaults)
            dedup = o.dedup or {}
            shared = (job_id or "", codec.encode(o.to_json_dict(), "job options"),
                      o.delay_ms, o.priority, 1 if o.lifo else 0, o.attempts,
                      dedup.get("id", ""), _dedup_mode(dedup), dedup.get("ttl_ms", 0))
            if cache is not None and not job_id:
                cache[key] = shared
        self.name = name
        self.args = (shared[0], name, codec.encode_data(data, f"data of job {name!r}", max_data),
                     *shared[1:])

    def traced(self, traceparent: str | None) -> None:
        """Store the producer's trace context in the job (optional tracing)."""
        if traceparent:
            a = self.args
            self.args = (*a[:3], tracehook.with_trace(a[3], traceparent), *a[4:])

    def stored(self, timestamp_ms: int) -> dict[str, str]:
        """The hash add.lua writes for this job (it returns only the timestamp)."""
        a = self.args
        raw = {"name": a[1], "data": a[2], "opts": a[3], "timestamp": str(timestamp_ms),
               "delay": str(a[4]), "priority": str(a[5]), "attempts": str(a[7]),
               "attempts_made": "0"}
        if a[8]:
            raw["dedup_id"] = a[8]
        return raw


class QueueCore(AdminOps, DepsOps, ReadOps, HistoryOps):
    """Names, keys and operations of one queue; no I/O of its own (the
    queue-wide admin and one-job operations are in core_admin.py, a
    parent's dependencies in deps.py, BullMQ's other getters in reads.py)."""

    def __init__(
        self, name: str, prefix: str = "rqsup",
        default_job_options: Mapping[str, Any] | None = None,
        max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES,
    ) -> None:
        if isinstance(max_data_bytes, bool) or not isinstance(max_data_bytes, int) or \
                max_data_bytes < 1:
            raise InvalidOption(f"max_data_bytes must be an int >= 1, got {max_data_bytes!r}")
        self.max_data_bytes = max_data_bytes
        self.keys = QueueKeys(prefix, name)
        self.name = name
        self.prefix = prefix
        #: What every script gets as KEYS: the base, from which it builds
        #: every key of the queue (one key to send and parse, not 26).
        self.key_list: tuple[str, ...] = (self.keys.base,)
        defaults = dict(default_job_options or {})
        if "job_id" in defaults:
            raise InvalidOption("job_id cannot be a queue-wide default")
        if "dedup" in defaults:
            raise InvalidOption("dedup cannot be a queue-wide default (it names one job)")
        options_mod.build({}, defaults)  # validate now, not at the first add
        self.default_job_options = defaults

    def script(self, name: str, *args: Any) -> Script:
        return Script(name, self.key_list, args)

    # -- adding ---------------------------------------------------------------

    def spec(self, name: str, data: Any, opts: Mapping[str, Any]) -> AddSpec:
        return AddSpec(name, data, opts, self.default_job_options,
                       max_data=self.max_data_bytes)

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
                spec = AddSpec(name, data, opts, self.default_job_options, cache,  # type: ignore[arg-type]
                               max_data=self.max_data_bytes)
                specs.append(spec)
            except (InvalidOption, EncodeError) as exc:
                raise type(exc)(f"bulk job #{i}: {exc}") from None
        return specs

    def op_add_jobs(
        self, specs: list[AddSpec], reply_to: str | None = None
    ) -> Op[list[Added]]:
        """Add jobs; returns what happened to each (:class:`Added`).
        ``reply_to``: the reply list of a call (one job), answered when it ends."""
        if reply_to is not None and len(specs) != 1:
            raise ValueError("a reply list is for a call: one job")
        out: list[Added] = []
        chunks = [specs[i : i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)]
        # Send up to ADD_CHUNKS_PER_CALL chunks per round trip: fewer waits,
        # bounded pipeline size.
        for g in range(0, len(chunks), ADD_CHUNKS_PER_CALL):
            reqs = []
            for chunk in chunks[g : g + ADD_CHUNKS_PER_CALL]:
                args = _add_argv(chunk)
                if reply_to is not None:
                    args.append(reply_to)
                reqs.append(self.script("add", *args))
            replies = yield (reqs[0] if len(reqs) == 1 else Batch(reqs))
            if len(reqs) == 1:
                replies = [replies]
            entries = [entry for reply in replies for entry in reply]
            done = len(out)
            out += added_from(specs[done:done + len(entries)], entries)
        return out

    def add_args(self, chunk: list[AddSpec]) -> tuple[Any, ...]:
        """The EVALSHA of add.lua for one chunk (fastbulk packs it itself)."""
        return ("EVALSHA", SCRIPTS["add"].sha, 1, self.key_list[0], *_add_argv(chunk))

    # -- deduplication --------------------------------------------------------

    def op_get_dedup_job_id(self, dedup_id: str) -> Op[str | None]:
        raw = yield Command(("GET", self.keys.dedup(dedup_id)))
        return None if raw is None else codec.text(raw)

    def op_remove_dedup_key(self, dedup_id: str, job_id: str = "") -> Op[bool]:
        n = yield self.script("remove_dedup", dedup_id, job_id)
        return bool(n)

    # -- reading --------------------------------------------------------------

    def op_get_record(self, job_id: str) -> Op[JobRecord | None]:
        raw = yield Batch([Command(("HGETALL", self.keys.job(job_id)))], errors_in_place=True)
        return _record(job_id, raw[0]) if raw[0] else None

    def op_require_record(self, job_id: str) -> Op[JobRecord]:
        rec = yield from self.op_get_record(job_id)
        if rec is None:
            raise JobNotFound(job_id)
        return rec

    def op_get_records(self, states: str | Iterable[str], start: int = 0, end: int = -1,
                       asc: bool = False) -> Op[list[JobRecord]]:
        """Jobs of one state or several (each state's range, in the order
        given), as BullMQ's getJobs: newest first (the wait list's last
        added, a zset's highest score), or oldest first with ``asc``. A listed
        id whose hash is gone is skipped and the range filled from the jobs
        beyond it, so a page is short only at the end of the state."""
        names = [states] if isinstance(states, str) else list(states)
        for state in names:
            if state not in STATES:
                raise InvalidOption(f"unknown state {state!r}; known: {', '.join(STATES)}")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidOption(f"{name} must be an int, got {value!r}")
        if start < 0:
            raise InvalidOption(f"start must be >= 0, got {start}")
        out: list[JobRecord] = []
        for state in names:
            out += yield from self._state_range(state, start, end, asc)
        return out

    def _ids_at(self, state: str, pos: int, stop: int, asc: bool) -> Op[list[str]]:
        """Ids at positions pos..stop (stop -1: to the end) in listing order."""
        if state == "wait":
            if asc:  # the pop end (next to run) first
                raw = yield Command(("LRANGE", self.keys.wait, -(stop + 1) if stop >= 0 else 0,
                                     -(pos + 1)))
                return [codec.text(i) for i in reversed(raw)]
            raw = yield Command(("LRANGE", self.keys.wait, pos, stop))
        else:
            cmd = "ZRANGE" if asc else "ZREVRANGE"
            raw = yield Command((cmd, self.keys.key(state), pos, stop))
        return [codec.text(i) for i in raw]

    def _state_range(self, state: str, start: int, end: int, asc: bool) -> Op[list[JobRecord]]:
        want = None if end < 0 else max(0, end - start + 1)
        out: list[JobRecord] = []
        pos = start
        for _round in range(GET_JOBS_FILL_ROUNDS):
            if want is not None and len(out) >= want:
                break
            stop = -1 if want is None else pos + (want - len(out)) - 1
            ids = yield from self._ids_at(state, pos, stop, asc)
            if not ids:
                break
            hashes = yield Batch([Command(("HGETALL", self.keys.job(i))) for i in ids],
                                 errors_in_place=True)
            out += [_record(i, h) for i, h in zip(ids, hashes, strict=True) if h]
            if want is None or len(ids) < stop - pos + 1:
                break  # the whole rest was read, or the state ended
            pos += len(ids)
        return out

    def op_malformed(self, start: int = 0, end: int = -1) -> Op[list[tuple[str, str, int]]]:
        """Ids set aside because their key is no job hash: (id, why, when ms),
        oldest first."""
        raw = yield Command(("ZRANGE", self.keys.malformed, start, end, "WITHSCORES"))
        # redis-py pairs the reply up, or not, depending on the protocol.
        pairs = raw if raw and isinstance(raw[0], list | tuple) else list(zip(
            raw[::2], raw[1::2], strict=True))
        ids = [codec.text(i) for i, _at in pairs]
        if not ids:
            return []
        why = yield Command(("HMGET", self.keys.malformed_why, *ids))
        return [(i, codec.text(w), int(float(at))) for i, w, (_m, at) in
                zip(ids, why, pairs, strict=True)]

    def op_count_malformed(self) -> Op[int]:
        return int((yield Command(("ZCARD", self.keys.malformed))))

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


def _record(job_id: str, reply: Any) -> JobRecord:
    """A job from its HGETALL reply; a key of another type gives a record that
    says so (``broken``) instead of failing the whole listing."""
    if isinstance(reply, Exception):
        return JobRecord(job_id, {}, broken=f"its key is not a job hash ({reply})")
    return JobRecord(job_id, fields_of(reply))

"""Scheduler (repeatable job) operations, written once as generators of requests.

A scheduler lives in Redis only: a hash per scheduler and a zset of ids by
the run time of their pending job. Its pending run is a normal delayed job
with the id ``sched:<scheduler id>:<run ms>``. Redis cannot evaluate cron,
so Python computes run times (with the server's clock, read by the scripts)
and the scripts apply them with a compare-and-set; see docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from rqsup.errors import EncodeError, InvalidOption
from rqsup.keys import validate_name
from rqsup.queue import codec
from rqsup.queue import options as options_mod
from rqsup.queue.core import QueueCore
from rqsup.queue.record import fields_of
from rqsup.queue.schedule import Schedule
from rqsup.queue.scripts import Batch, Command, Op, Script

#: Template options a scheduler decides itself.
_REFUSED_OPTIONS = {
    "job_id": "job_id is chosen by the scheduler (sched:<id>:<run ms>)",
    "delay": "delay is chosen by the scheduler (the run time)",
    "dedup": "a scheduler's runs are not deduplicated (one run is pending at a time)",
}
#: Due schedulers handled per queue per call of the advancing loop.
DUE_CHUNK = 1000


def validate_scheduler_id(scheduler_id: str) -> str:
    """Same rules as queue names: the id is part of a key and of job ids."""
    try:
        return validate_name("scheduler id", scheduler_id)
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None


def _plain(value: Any) -> Any:
    """Options as JSON can hold them: timedeltas become seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _canonical(value: Any, what: str) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EncodeError(f"{what} cannot be encoded as JSON: {exc}") from None


@dataclass(frozen=True)
class SchedulerInfo:
    """A scheduler as stored: its definition, its pending run and how many runs it made.

    ``next_run_ms``/``job_id`` are the pending run (None when done); ``done``
    says why a scheduler stopped: ``"limit"`` (all runs made) or ``"end"``
    (no run before its end).
    """

    id: str
    cron: str | None
    every_s: float | None
    tz: str | None
    start_ms: int | None
    end_ms: int | None
    limit: int | None
    name: str
    data: Any
    options: dict[str, Any]
    count: int
    next_run_ms: int | None
    job_id: str | None
    done: str | None
    created_ms: int
    updated_ms: int
    #: The latest run that came due (its time and job), None before the first.
    last_run_ms: int | None = None
    last_job_id: str | None = None

    @property
    def next_run(self) -> datetime | None:
        """The pending run time (UTC), or None when done."""
        if self.next_run_ms is None:
            return None
        return datetime.fromtimestamp(self.next_run_ms / 1000, UTC)

    @classmethod
    def from_fields(cls, scheduler_id: str, f: dict[str, str]) -> SchedulerInfo:
        spec = codec.decode(f["spec"])
        every = spec.get("every_ms")
        return cls(
            id=scheduler_id, cron=spec.get("cron"), every_s=None if every is None else every / 1000,
            tz=spec.get("tz"), start_ms=spec.get("start_ms"), end_ms=spec.get("end_ms"),
            limit=spec.get("limit"), name=f.get("name", ""),
            data=codec.decode(f["data"]) if f.get("data") else None,
            options=spec.get("options") or {}, count=int(f.get("count") or 0),
            next_run_ms=int(f["next"]) if f.get("next") else None,
            job_id=f.get("job") or None, done=f.get("done") or None,
            created_ms=int(f.get("created") or 0), updated_ms=int(f.get("updated") or 0),
            last_run_ms=int(f["last"]) if f.get("last") else None,
            last_job_id=f.get("last_job") or None,
        )


@dataclass(frozen=True)
class AdvanceReport:
    """What one pass of :func:`op_advance_due` did, and when to look again."""

    added: list[str]  # job ids of the runs added
    done: list[tuple[str, str]]  # (scheduler id, reason) of schedulers that finished
    next_due_ms: int  # ms until the next pending run is due, -1 when none
    waiting_since_ms: int  # ms since the latest due run that has not started, -1 none
    more: bool  # DUE_CHUNK schedulers were due: call again at once


def _script(core: QueueCore, name: str, *args: Any) -> Script:
    return Script(name, (*core.key_list, *core.keys.scheduler_keys()), args)


def _template(core: QueueCore, scheduler_id: str, template: Mapping[str, Any] | None
              ) -> tuple[str, str, dict[str, Any], options_mod.JobOptions]:
    template = dict(template or {})
    unknown = set(template) - {"name", "data", "options"}
    if unknown:
        raise InvalidOption(f"template has unknown keys {sorted(unknown)} "
                            "(use name, data, options)")
    name = template.get("name", scheduler_id)
    if not isinstance(name, str) or not name:
        raise InvalidOption(f"template name must be a non-empty string, got {name!r}")
    options = template.get("options") or {}
    if not isinstance(options, Mapping):
        raise InvalidOption(f"template options must be a mapping, got {options!r}")
    for key, why in _REFUSED_OPTIONS.items():
        if key in options:
            raise InvalidOption(f"template option {key!r} is not allowed: {why}")
    _job_id, opts = options_mod.build(options, core.default_job_options)
    data = codec.encode(template.get("data"), f"data of scheduler {scheduler_id!r}")
    return name, data, _plain(options), opts


def op_upsert(
    core: QueueCore, scheduler_id: str, schedule: Schedule,
    template: Mapping[str, Any] | None, count: int | None = None,
) -> Op[SchedulerInfo]:
    """Create or redefine a scheduler; an unchanged definition changes nothing.
    ``count``: runs to count as made already (BullMQ's count, against limit)."""
    validate_scheduler_id(scheduler_id)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 0):
        raise InvalidOption(f"count must be an int >= 0 (runs made already), got {count!r}")
    name, data, options, opts = _template(core, scheduler_id, template)
    extra = {} if count is None else {"count": count}
    spec = _canonical({**schedule.to_json(), "options": options, **extra},
                      f"options of scheduler {scheduler_id!r}")
    secs, micros = (yield Command(("TIME",)))
    first = schedule.first_run(int(secs) * 1000 + int(micros) // 1000)
    yield _script(
        core, "upsert_scheduler", scheduler_id, spec, name, data,
        codec.encode(opts.to_json_dict(), "job options"), opts.priority, 1 if opts.lifo else 0,
        opts.attempts, schedule.limit or 0, "" if first is None else first,
        "end" if first is None else "", "" if count is None else count,
    )
    info = yield from op_get(core, scheduler_id)
    assert info is not None
    return info


def op_get(core: QueueCore, scheduler_id: str) -> Op[SchedulerInfo | None]:
    raw = yield Command(("HGETALL", core.keys.scheduler(scheduler_id)))
    f = fields_of(raw)
    return SchedulerInfo.from_fields(scheduler_id, f) if f.get("spec") else None


def op_list(core: QueueCore, start: int = 0, end: int = -1) -> Op[list[SchedulerInfo]]:
    """Schedulers by the time of their next run (done ones last)."""
    raw = yield Command(("ZRANGE", core.keys.schedulers, start, end))
    ids = [codec.text(i) for i in raw]
    if not ids:
        return []
    hashes = yield Batch([Command(("HGETALL", core.keys.scheduler(i))) for i in ids])
    out = []
    for sid, h in zip(ids, hashes, strict=True):
        f = fields_of(h)
        if f.get("spec"):
            out.append(SchedulerInfo.from_fields(sid, f))
    return out


def op_remove(core: QueueCore, scheduler_id: str) -> Op[bool]:
    """Delete a scheduler and its pending run (a run that started stays)."""
    return bool((yield _script(core, "remove_scheduler", scheduler_id)))


def advance_to(spec_json: str, next_ms: int, started: str, now_ms: int) -> int | None:
    """The run that follows the pending run ``next_ms`` once it has started.

    Runs are counted from when that run started (``started``, or now when
    its job is gone): times that passed while it waited (downtime, backlog)
    are skipped, never replayed in a burst.
    """
    schedule = Schedule.from_json(codec.decode(spec_json))
    base = int(started) if started else now_ms
    return schedule.next_run(max(next_ms, base))


def op_advance_due(core: QueueCore) -> Op[AdvanceReport]:
    """Add the next run of every scheduler whose pending run has started.

    Safe to run from any number of processes at once: scheduler_next only
    applies a run computed from the scheduler's current state.
    """
    reply = yield _script(core, "scheduler_due", DUE_CHUNK)
    now, next_due, waiting_at = int(reply[0]), int(reply[1]), int(reply[2])
    items = [[codec.text(x) for x in item] for item in reply[3:]]
    reqs = []
    for sid, rev, nxt, started, spec in items:
        run = advance_to(spec, int(nxt), started, now)
        reqs.append(_script(core, "scheduler_next", sid, rev, nxt,
                            "" if run is None else run, "end" if run is None else ""))
    added: list[str] = []
    done: list[tuple[str, str]] = []
    if reqs:
        replies = yield Batch(reqs)
        for (sid, *_rest), (code, detail) in zip(items, replies, strict=True):
            if int(code) == 0:
                added.append(codec.text(detail))
            elif int(code) == 1:
                done.append((sid, codec.text(detail)))
    return AdvanceReport(added=added, done=done, next_due_ms=next_due,
                         waiting_since_ms=-1 if waiting_at < 0 else now - waiting_at,
                         more=len(items) >= DUE_CHUNK)

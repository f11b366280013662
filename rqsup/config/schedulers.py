"""``[[schedulers]]`` of the supervisor's TOML config (repeatable jobs).

Kept apart from :mod:`rqsup.config` (which calls it) to keep both short. The
timing is validated by the same code as ``queue.upsert_scheduler`` and the
job options by the same code as ``queue.add``, so messages match. A
scheduler may name any queue: the supervisor advances the schedulers of the
queues it serves and of those its ``[[schedulers]]`` name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from rqsup.config.tomltable import Problems, Table, as_toml, boolean, duration, integer, string
from rqsup.errors import EncodeError, InvalidOption
from rqsup.keys import validate_name
from rqsup.queue import codec
from rqsup.queue import options as options_mod
from rqsup.queue.schedule import MIN_EVERY_MS, Schedule, time_ms

SCHEDULER_KEYS = (
    "id", "queue", "cron", "every", "tz", "start", "end", "limit", "name", "data", "options",
    "immediately", "count",
)
#: Job options a scheduler's runs may set (``job_id`` and ``delay`` are the scheduler's).
TEMPLATE_OPTION_KEYS = (
    "priority", "lifo", "attempts", "backoff", "timeout", "remove_on_complete",
    "remove_on_fail", "keep_logs",
)
_REFUSED_OPTIONS = {
    "job_id": "run ids are chosen by the scheduler (sched:<id>:<run ms>)",
    "delay": "run times are chosen by the scheduler (cron or every)",
    "dedup": "a scheduler's runs are not deduplicated (one run is pending at a time)",
}


@dataclass(frozen=True)
class SchedulerConfig:
    """``[[schedulers]]``: a scheduler upserted when the supervisor starts (and on
    SIGHUP). Times are epoch ms; ``options`` are in the producer's form
    (durations in seconds); ``name`` None means "the id"."""

    id: str
    queue: str
    cron: str | None = None
    every_s: float | None = None
    tz: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int | None = None
    immediately: bool = False
    count: int | None = None
    name: str | None = None
    data: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def parse_schedulers(
    top: Table, problems: Problems, option_seconds: Callable[[str, Any], Any]
) -> tuple[SchedulerConfig, ...]:
    """``option_seconds(key, value)`` turns duration strings of a job option into
    seconds (rqsup.config's, shared with ``[queues.defaults]``)."""
    raw = top.raw.get("schedulers")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        top.problem("schedulers", "must be an array of tables: write [[schedulers]]")
        return ()
    out: list[SchedulerConfig] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(raw):
        s = _scheduler(Table(item, f"schedulers[{i}]", SCHEDULER_KEYS, problems), option_seconds)
        key = (s.queue, s.id)
        if s.id and s.queue and key in seen:
            problems.add(f"schedulers[{i}].id",
                         f"duplicate scheduler {as_toml(s.id)} for queue {as_toml(s.queue)} "
                         f"(also schedulers[{seen[key]}])")
        elif s.id and s.queue:
            seen[key] = i
        out.append(s)
    return tuple(out)


def _scheduler(t: Table, option_seconds: Callable[[str, Any], Any]) -> SchedulerConfig:
    before = len(t.problems.lines)
    sid = t.require("id", lambda v: validate_name("scheduler id", v), "", show=None)
    queue = t.require("queue", lambda v: validate_name("queue name", v), "", show=None)
    tz = t.get("tz", _tz, None)
    zone = ZoneInfo(tz) if tz else None
    cron = t.get("cron", _cron, None)
    every = t.get("every", duration(min_s=MIN_EVERY_MS / 1000), None)
    if ("cron" in t.raw) == ("every" in t.raw) and t.is_table:
        t.problem(None, 'needs exactly one of cron (e.g. "*/15 * * * *") or every (e.g. "15m")')
    start = t.get("start", lambda v: time_ms("start", v, zone), None, show=None)
    end = t.get("end", lambda v: time_ms("end", v, zone), None, show=None)
    limit = t.get("limit", integer(1), None)
    immediately = t.get("immediately", boolean, False)
    count = t.get("count", integer(0), None)
    name = t.get("name", string, None)
    data = t.get("data", _data, None, show=None)
    options = _options(t.table("options", TEMPLATE_OPTION_KEYS, refused=_REFUSED_OPTIONS),
                       option_seconds)
    if len(t.problems.lines) == before and (cron is None) != (every is None):
        try:  # what depends on several keys: end after start, tz with every
            Schedule.build(cron=cron, every=every, tz=tz, start=start, end=end, limit=limit,
                           immediately=immediately)
        except InvalidOption as exc:
            t.problem(None, str(exc))
    return SchedulerConfig(id=sid, queue=queue, cron=cron, every_s=every, tz=tz, start_ms=start,
                           end_ms=end, limit=limit, immediately=immediately, count=count,
                           name=name, data=data, options=options)


def _options(t: Table, option_seconds: Callable[[str, Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in TEMPLATE_OPTION_KEYS:
        if key not in t.raw:
            continue
        try:
            value = option_seconds(key, t.raw[key])
            options_mod.build({key: value}, {})
        except ValueError as exc:  # InvalidOption is a ValueError
            t.problem(key, str(exc))
            continue
        out[key] = value
    return out


# -- value parsers (raise ValueError saying what is wrong) ----------------------


def _tz(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be an IANA time zone name such as "Europe/Riga"')
    try:
        ZoneInfo(value)
    except (KeyError, ValueError):
        raise ValueError("is not a known IANA time zone") from None
    return value


def _cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a cron expression such as "*/15 * * * *"')
    return Schedule.build(cron=value).cron or value


def _data(value: Any) -> Any:
    try:
        codec.encode(value, "data")
    except EncodeError:
        raise ValueError("must be JSON data (TOML dates and times are not)") from None
    return value

"""Job options: validation and normalisation in one place.

Durations given by users are seconds (int, float or timedelta); what is
stored and handed to scripts is milliseconds. Retention defaults are
bounded: nothing is kept forever unless asked for explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from rqsup import backoff as backoff_mod
from rqsup.errors import InvalidOption
from rqsup.keys import validate_dedup_id, validate_job_id

MAX_PRIORITY = 2**21
DAY_MS = 86_400_000

#: Completed jobs: keep the newest 1,000, none older than a day.
DEFAULT_KEEP_COMPLETED = {"count": 1000, "age_ms": DAY_MS}
#: Failed jobs: keep the newest 10,000, none older than a week.
DEFAULT_KEEP_FAILED = {"count": 10_000, "age_ms": 7 * DAY_MS}
DEFAULT_KEEP_LOGS = 100

OPTION_NAMES = frozenset(
    {
        "job_id", "delay", "priority", "lifo", "attempts", "backoff", "timeout",
        "remove_on_complete", "remove_on_fail", "keep_logs", "dedup",
    }
)

#: Options that exist, but not where they were given.
_ELSEWHERE = {
    "parent": "parent= is taken by Queue.add, one job at a time; for many, use "
              "FlowProducer.add_bulk",
    "failure_policy": "failure_policy is for a child: in a flow, or with Queue.add(parent=...)",
}

#: Deduplication modes (docs/decisions.md, "Deduplication").
DEDUP_MODES = ("until_done", "ttl", "debounce")


def seconds_to_ms(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOption(f"{name} must be seconds (a number or timedelta), got {value!r}")
    if value < 0:
        raise InvalidOption(f"{name} must be >= 0 seconds, got {value!r}")
    return round(value * 1000)


def epoch_ms(when: Any, name: str = "timestamp") -> int | None:
    """A point in time (epoch seconds, or an aware or naive-local datetime)
    as epoch ms; None stays None."""
    if when is None:
        return None
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, int | float) or when < 0:
        raise InvalidOption(f"{name} must be epoch seconds or a datetime, got {when!r}")
    return int(when * 1000)


def retention(name: str, value: Any, default: Mapping[str, int]) -> dict[str, int]:
    """Normalise remove_on_complete / remove_on_fail to ``{"count", "age_ms"}``.

    ``True``: remove at once. ``False``: keep forever (explicit). An int: keep
    that many. A mapping ``{"age": seconds, "count": n}``: both bounds.
    ``-1`` means "no bound" for either field.
    """
    if value is None:
        return dict(default)
    if value is True:
        return {"count": 0, "age_ms": -1}
    if value is False:
        return {"count": -1, "age_ms": -1}
    if isinstance(value, int):
        if value < 0:
            raise InvalidOption(f"{name} count must be >= 0, got {value}")
        return {"count": value, "age_ms": -1}
    if isinstance(value, Mapping):
        unknown = set(value) - {"age", "count"}
        if unknown:
            raise InvalidOption(f"{name} has unknown keys {sorted(unknown)} (use age, count)")
        count = value.get("count", -1)
        if isinstance(count, bool) or not isinstance(count, int) or count < -1:
            raise InvalidOption(f"{name} count must be an int >= 0, got {count!r}")
        age = value.get("age")
        age_ms = -1 if age is None else seconds_to_ms(f"{name} age", age)
        return {"count": count, "age_ms": age_ms if age_ms is not None else -1}
    raise InvalidOption(f"{name} must be True, False, a count or {{age, count}}, got {value!r}")


#: BullMQ's flags on top of a mode (docs/decisions.md, "Deduplication").
DEDUP_FLAGS = ("extend", "replace", "keep_last_if_active")


def dedup_option(value: Any, delay_ms: int) -> dict[str, Any] | None:
    """Normalise ``dedup`` to ``{"id", "mode"[, "ttl_ms"][, "flags"]}``.

    ``"user-7"`` or ``{"id": "user-7"}``: mode until_done (no second job while
    the first is unfinished). ``{"id", "ttl": s}``: mode ttl (at most one job
    per window). ``{"id", "mode": "debounce"}`` with ``delay > 0``: a newer add
    replaces the pending delayed job and moves its due time. BullMQ's flags:
    ``extend`` (mode ttl: a duplicate add restarts the window), ``replace`` (a
    newer add replaces a kept job that is delayed and not started, with a new
    job and id), ``keep_last_if_active`` (mode until_done: the last add made
    while the kept job runs is created when it ends).
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = {"id": value}
    if not isinstance(value, Mapping):
        raise InvalidOption(f"dedup must be an id (str) or {{id, ttl, mode}}, got {value!r}")
    unknown = set(value) - {"id", "ttl", "mode", *DEDUP_FLAGS}
    if unknown:
        raise InvalidOption(f"dedup has unknown keys {sorted(unknown)} (use id, ttl, mode, "
                            f"{', '.join(DEDUP_FLAGS)})")
    if "id" not in value:
        raise InvalidOption(f"dedup needs an id, got {dict(value)!r}")
    try:
        dedup_id = validate_dedup_id(value["id"])
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    ttl_ms = seconds_to_ms("dedup ttl", value.get("ttl"), allow_none=True)
    mode = value.get("mode", "ttl" if ttl_ms is not None else "until_done")
    if mode not in DEDUP_MODES:
        raise InvalidOption(f"dedup mode must be one of {list(DEDUP_MODES)}, got {mode!r}")
    flags = []
    for flag in DEDUP_FLAGS:
        on = value.get(flag, False)
        if not isinstance(on, bool):
            raise InvalidOption(f"dedup {flag} must be true or false, got {on!r}")
        if on:
            flags.append(flag)
    needs = {"extend": "ttl", "keep_last_if_active": "until_done"}
    for flag in flags:
        if flag in needs and mode != needs[flag]:
            raise InvalidOption(f"dedup {flag} applies to mode {needs[flag]!r}, not {mode!r}")
    if "replace" in flags and mode == "debounce":
        raise InvalidOption("dedup replace and mode 'debounce' both replace the pending job: "
                            "use one (debounce keeps its id, replace makes a new job)")
    out: dict[str, Any] = {"id": dedup_id, "mode": mode}
    if flags:
        out["flags"] = flags
    if mode == "ttl":
        if not ttl_ms:
            raise InvalidOption("dedup mode 'ttl' needs a ttl > 0 seconds (the throttle window)")
        out["ttl_ms"] = ttl_ms
        return out
    if ttl_ms is not None:
        hint = " (a debounce window is the job's delay)" if mode == "debounce" else ""
        raise InvalidOption(f"dedup ttl applies only to mode 'ttl', not {mode!r}{hint}")
    if mode == "debounce" and delay_ms <= 0:
        raise InvalidOption(
            "dedup mode 'debounce' needs delay > 0: the job waits that long after the "
            "last add before it runs"
        )
    return out


@dataclass(frozen=True)
class JobOptions:
    """Normalised options of one job, as stored (JSON) in its hash."""

    delay_ms: int = 0
    priority: int = 0
    lifo: bool = False
    attempts: int = 1
    backoff: dict[str, Any] | None = None
    timeout_ms: int | None = None
    keep_completed: dict[str, int] | None = None
    keep_failed: dict[str, int] | None = None
    keep_logs: int = DEFAULT_KEEP_LOGS
    dedup: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Only what differs from the defaults: job hashes stay small."""
        out = {}
        for name, default in _DEFAULTS.items():
            value = getattr(self, name)
            if value is not None and value != default:
                out[name] = value
        return out

    @classmethod
    def from_stored(cls, raw: Mapping[str, Any]) -> JobOptions:
        """Read options back from a job hash, checking each one's type (a value
        of the wrong type raises ValueError naming it: the job is malformed,
        and must fail alone rather than break whoever reads it). Unknown keys
        are ignored (a newer writer)."""
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for name, value in known.items():
            check = _STORED_CHECKS[name]
            if value is not None and not check(value):
                raise ValueError(f"option {name!r} has a bad value: {value!r:.60}")
        return cls(**known)

    @property
    def completed_retention(self) -> dict[str, int]:
        return self.keep_completed or dict(DEFAULT_KEEP_COMPLETED)

    @property
    def failed_retention(self) -> dict[str, int]:
        return self.keep_failed or dict(DEFAULT_KEEP_FAILED)


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _retention(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) <= {"count", "age_ms"}
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= -1
                    for x in v.values()))


#: What each stored option must look like (None is always fine: the default).
_STORED_CHECKS: dict[str, Any] = {
    "delay_ms": _nat,
    "priority": lambda v: _nat(v) and v <= MAX_PRIORITY,
    "lifo": lambda v: isinstance(v, bool),
    "attempts": lambda v: _nat(v) and v >= 1,
    "backoff": lambda v: isinstance(v, dict),
    "timeout_ms": lambda v: _nat(v) and v > 0,
    "keep_completed": _retention,
    "keep_failed": _retention,
    "keep_logs": _nat,
    "dedup": lambda v: isinstance(v, dict),
}

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(JobOptions)}
_DEFAULTS["keep_completed"] = DEFAULT_KEEP_COMPLETED
_DEFAULTS["keep_failed"] = DEFAULT_KEEP_FAILED


def build(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple[str | None, JobOptions]:
    """Merge queue defaults with per-job options and validate; returns (job_id, options)."""
    merged = {**defaults, **options}
    unknown = set(merged) - OPTION_NAMES
    if unknown:
        hints = [why for name, why in _ELSEWHERE.items() if name in unknown]
        raise InvalidOption(
            f"unknown job option(s) {sorted(unknown)}; known: {sorted(OPTION_NAMES)}"
            + "".join(f" ({h})" for h in hints)
        )
    job_id = merged.get("job_id")
    if job_id is not None:
        try:
            job_id = validate_job_id(job_id)
        except ValueError as exc:
            raise InvalidOption(str(exc)) from None
    priority = merged.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
        0 <= priority <= MAX_PRIORITY
    ):
        raise InvalidOption(f"priority must be an int from 0 to {MAX_PRIORITY}, got {priority!r}")
    attempts = merged.get("attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise InvalidOption(f"attempts must be an int >= 1, got {attempts!r}")
    lifo = merged.get("lifo", False)
    if not isinstance(lifo, bool):
        raise InvalidOption(f"lifo must be True or False, got {lifo!r}")
    keep_logs = merged.get("keep_logs", DEFAULT_KEEP_LOGS)
    if isinstance(keep_logs, bool) or not isinstance(keep_logs, int) or keep_logs < 0:
        raise InvalidOption(f"keep_logs must be an int >= 0, got {keep_logs!r}")
    timeout_ms = seconds_to_ms("timeout", merged.get("timeout"), allow_none=True)
    if timeout_ms == 0:
        raise InvalidOption("timeout must be > 0 seconds (omit it for no timeout)")
    delay_ms = seconds_to_ms("delay", merged.get("delay", 0)) or 0
    opts = JobOptions(
        delay_ms=delay_ms,
        priority=priority,
        lifo=lifo,
        attempts=attempts,
        backoff=backoff_mod.normalize(merged.get("backoff")),
        timeout_ms=timeout_ms,
        keep_completed=retention(
            "remove_on_complete", merged.get("remove_on_complete"), DEFAULT_KEEP_COMPLETED
        ),
        keep_failed=retention("remove_on_fail", merged.get("remove_on_fail"), DEFAULT_KEEP_FAILED),
        keep_logs=keep_logs,
        dedup=dedup_option(merged.get("dedup"), delay_ms),
    )
    return job_id, opts

"""When a scheduler runs: cron or ``every``, time zone, start, end, limit.

Pure computation (no Redis): the scheduler operations call it with the Redis
server's clock. Cron expressions are evaluated by cronsim (docs/decisions.md
says why): 5 fields, or 6 with seconds first (``*/15 * * * * *``), in an IANA
time zone. Around DST changes an expression that fires at fixed times (one
number in its seconds field and fixed minutes and hours) behaves like
Debian's cron: a run that falls in the skipped hour happens at the jump, and
a run in the repeated hour happens once. Sub-minute and every-minute or
hourly expressions follow real time (an hourly job runs twice in the
repeated hour, as the clock shows it twice).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from rqsup.config import units
from rqsup.errors import InvalidOption

#: The shortest ``every``: a scheduler is advanced by a supervisor loop with
#: a few milliseconds of lag, so shorter intervals would only measure that lag.
MIN_EVERY_MS = 100
#: cronsim gives up after 50 years without a match; we stop looking sooner
#: when results keep landing before the reference time (DST folds).
_MAX_STEPS = 1000
_FIXED_SECOND = re.compile(r"\d{1,2}")


def _zone(tz: str | None) -> ZoneInfo | None:
    if tz is None:
        return None
    if not isinstance(tz, str) or not tz:
        raise InvalidOption(f"tz must be an IANA time zone name such as 'Europe/Riga', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidOption(f"tz {tz!r} is not a known IANA time zone") from None


def time_ms(name: str, value: Any, zone: ZoneInfo | None) -> int | None:
    """A start/end given as a datetime, a date, an ISO string or epoch ms.

    A datetime without a time zone (or a date: its midnight) is read in the
    scheduler's ``tz`` (UTC without one), as a crontab line would be.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOption(f"{name} must be a datetime or epoch milliseconds, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidOption(f"{name} must be >= 0 epoch milliseconds, got {value}")
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidOption(f"{name} must be an ISO 8601 datetime, got {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise InvalidOption(f"{name} must be a datetime or epoch milliseconds, got {value!r}")
    dt: datetime = value if value.tzinfo is not None else value.replace(tzinfo=zone or UTC)
    return math.floor(dt.timestamp() * 1000)


def every_ms(value: Any) -> int:
    """``every`` as milliseconds: seconds (a number or timedelta) or a duration such as "15m"."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    try:
        seconds = units.parse_duration(value)
    except ValueError as exc:
        raise InvalidOption(f"every {exc}, got {value!r}") from None
    ms = round(seconds * 1000)
    if ms < MIN_EVERY_MS:
        raise InvalidOption(f"every must be at least {MIN_EVERY_MS}ms, got {value!r}")
    return ms


@dataclass(frozen=True)
class Schedule:
    """The timing part of a scheduler, validated. Times are epoch ms."""

    cron: str | None = None
    every_ms: int | None = None
    tz: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int | None = None
    #: A cron scheduler's first run is now (BullMQ's immediately), not its
    #: first match; an ``every`` scheduler runs at once anyway.
    immediately: bool = False

    @classmethod
    def build(
        cls,
        *,
        cron: str | None = None,
        every: Any = None,
        tz: str | None = None,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        immediately: bool = False,
    ) -> Schedule:
        """Validate what a person wrote; InvalidOption names the bad value."""
        if (cron is None) == (every is None):
            raise InvalidOption("a scheduler needs exactly one of cron= or every=")
        zone = _zone(tz)
        if cron is not None:
            if not isinstance(cron, str):
                raise InvalidOption(f"cron must be a string such as '*/15 * * * *', got {cron!r}")
            cron = " ".join(cron.split())
            if len(cron.split()) not in (5, 6):
                raise InvalidOption(f"cron {cron!r} must have 5 fields, or 6 with seconds first")
            try:
                CronSim(cron, datetime.now(zone or UTC))
            except CronSimError as exc:
                raise InvalidOption(f"cron {cron!r} is invalid: {exc}") from None
        elif tz is not None:
            raise InvalidOption("tz applies to cron schedules only (every is plain elapsed time)")
        start_ms = time_ms("start", start, zone)
        end_ms = time_ms("end", end, zone)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise InvalidOption("end must be after start")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise InvalidOption(f"limit must be an int >= 1 (runs in all), got {limit!r}")
        if not isinstance(immediately, bool):
            raise InvalidOption(f"immediately must be true or false, got {immediately!r}")
        return cls(cron=cron, every_ms=None if every is None else every_ms(every), tz=tz,
                   start_ms=start_ms, end_ms=end_ms, limit=limit, immediately=immediately)

    def to_json(self) -> dict[str, Any]:
        out = {"cron": self.cron, "every_ms": self.every_ms, "tz": self.tz,
               "start_ms": self.start_ms, "end_ms": self.end_ms, "limit": self.limit}
        if self.immediately:  # only when set: older specs compare unchanged
            out["immediately"] = True
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schedule:
        fields: dict[str, Any] = {k: raw.get(k) for k in cls.__dataclass_fields__}
        fields["immediately"] = bool(raw.get("immediately"))
        return cls(**fields)

    # -- run times ------------------------------------------------------------

    def first_run(self, now_ms: int) -> int | None:
        """The first run of a new (or redefined) scheduler, or None when there is none.

        ``every`` runs at once (or at ``start``), then on its grid; cron runs at
        its first match from now (or from ``start``), or at once with
        ``immediately``.
        """
        if self.every_ms is not None or self.immediately:
            run = max(now_ms, self.start_ms or 0)
            return None if self.end_ms is not None and run > self.end_ms else run
        after = now_ms if self.start_ms is None else max(now_ms, self.start_ms - 1)
        return self.next_run(after)

    def next_run(self, after_ms: int) -> int | None:
        """The first run strictly after ``after_ms``, not before start and not after
        end; None when there is none."""
        if self.start_ms is not None and after_ms < self.start_ms - 1:
            after_ms = self.start_ms - 1
        run = self._every_next(after_ms) if self.every_ms is not None else self._cron_next(after_ms)
        if run is None or (self.end_ms is not None and run > self.end_ms):
            return None
        return run

    def _every_next(self, after_ms: int) -> int:
        """On the grid ``start + k * every`` (the epoch without a start): clock-aligned."""
        assert self.every_ms is not None
        anchor = self.start_ms or 0
        k = (after_ms - anchor) // self.every_ms + 1
        return anchor + k * self.every_ms

    def _cron_next(self, after_ms: int) -> int | None:
        assert self.cron is not None
        zone = ZoneInfo(self.tz) if self.tz else UTC
        expr, offset_s = self.cron, 0
        fields = expr.split()
        if len(fields) == 6 and _FIXED_SECOND.fullmatch(fields[0]) and int(fields[0]) < 60:
            # cronsim applies Debian's DST rules to 5-field expressions only; a
            # fixed second is the same schedule shifted, so keep those rules.
            expr, offset_s = " ".join(fields[1:]), int(fields[0])
        ref = datetime.fromtimestamp((after_ms - offset_s * 1000) / 1000, zone)
        it = CronSim(expr, ref)
        for _ in range(_MAX_STEPS):
            try:
                found = next(it)
            except StopIteration:
                return None
            run = math.floor(found.timestamp() * 1000) + offset_s * 1000
            # In the repeated hour cronsim may answer with the first pass of a
            # time we are already past: go on to the next match.
            if run > after_ms:
                return run
        return None

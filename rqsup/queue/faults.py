"""Redis errors, classified in one place, and the retry episodes of long-running loops.

Every loop that talks to Redis for as long as the process lives (a worker's
pump, the lease renewer, the stall sweeper, the scheduler loop, event
readers) catches :data:`REDIS_ERRORS`, asks :func:`classify` what happened,
and lets an :class:`Episode` decide how long to wait and what to log: one
line when an outage starts, one when Redis answers again, and nothing in
between but a reminder now and then. No Redis error ends such a loop.

redis-py's own classes do not say what matters here: ``OutOfMemoryError``,
``NoPermissionError`` and ``ReadOnlyError`` are ``ResponseError``\\ s (not
connection errors), ``BusyLoadingError`` is a ``ConnectionError``, and a
script that failed is a plain ``ResponseError``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time

import redis

#: The ACL rules rqsup needs on its key prefix (docs/operations.md, "Redis
#: ACL"): the data commands, scripting, INFO (rqsup check) and TIME (scripts
#: read the server clock), nothing dangerous, no pub/sub.
MINIMAL_ACL = ("~<prefix>:* resetchannels -@all +@read +@write +@scripting +@connection "
               "-@dangerous +info +time")

#: What a Redis call can raise besides the errors a script returns on purpose.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, ConnectionError, OSError)


class Fault(enum.Enum):
    """What went wrong, as far as what to do about it goes."""

    CONNECTION = "connection lost"
    OOM = "out of memory (maxmemory reached)"
    LOADING = "loading its dataset"
    READONLY = "read-only (a replica, after a failover?)"
    CLUSTER = "cluster reconfiguring"
    NOPERM = "permission denied (ACL)"
    AUTH = "authentication failed"
    SCRIPT = "a script failed"
    OTHER = "an unexpected error"

    @property
    def transient(self) -> bool:
        """Goes away by itself: retry quietly. The others need a person (or are
        a bug) and are logged at ERROR, but retried all the same."""
        return self in _TRANSIENT


_TRANSIENT = frozenset({Fault.CONNECTION, Fault.OOM, Fault.LOADING, Fault.READONLY,
                        Fault.CLUSTER})


def classify(exc: BaseException) -> Fault:
    """The :class:`Fault` an exception from a Redis call stands for."""
    if isinstance(exc, redis.BusyLoadingError):
        return Fault.LOADING
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return Fault.AUTH
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | OSError):
        return Fault.CONNECTION
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return Fault.OOM
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return Fault.NOPERM
    if isinstance(exc, redis.ReadOnlyError):
        return Fault.READONLY
    if isinstance(exc, redis.exceptions.TryAgainError | redis.exceptions.ClusterDownError
                  | redis.exceptions.AskError):
        return Fault.CLUSTER
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        # Inside a script, Redis passes the inner command's error on.
        if text.startswith("OOM ") or "used memory > 'maxmemory'" in text:
            return Fault.OOM
        if text.startswith("NOPERM") or "can't run this command" in text:
            return Fault.NOPERM
        if text.startswith("READONLY"):
            return Fault.READONLY
        if "script:" in text or "user_script" in text or text.startswith("Error running script"):
            return Fault.SCRIPT
    return Fault.OTHER


_NOPERM_CMD = re.compile(r"run the '([^']+)' command|'([^']+)' command")


def describe(exc: BaseException) -> str:
    """One line for a log: what happened, and for a permission error, the
    command refused and where the minimal ACL is written down."""
    fault = classify(exc)
    text = str(exc) or type(exc).__name__
    if fault is Fault.NOPERM:
        m = _NOPERM_CMD.search(text)
        cmd = repr(m.group(1) or m.group(2)) if m else "a command (ACL LOG on the server names it)"
        return (f"Redis refused {cmd} for this user ({text}); rqsup needs at least: ACL "
                f"SETUSER <user> {MINIMAL_ACL} (docs/operations.md, \"Redis ACL\")")
    return f"Redis {fault.value}: {text}"


class Episode:
    """Retries of one loop through a run of Redis failures.

    ``await episode.failed(exc)`` logs the first failure (and a reminder every
    ``remind_s``), then sleeps a backoff that doubles from ``first_s`` to
    ``max_s``; ``episode.ok()`` after a call that worked logs the recovery once.
    """

    def __init__(self, what: str, logger: logging.Logger, *, first_s: float = 0.05,
                 max_s: float = 5.0, remind_s: float = 60.0) -> None:
        self.what = what
        self.log = logger
        self.first_s = first_s
        self.max_s = max_s
        self.remind_s = remind_s
        self.failures = 0
        self.since = 0.0
        self._reminded = 0.0
        self._delay = first_s
        self.last: Fault | None = None

    @property
    def active(self) -> bool:
        return self.failures > 0

    @property
    def next_delay_s(self) -> float:
        """The backoff the next failure will wait."""
        return self._delay

    def note(self, exc: BaseException) -> float:
        """Record a failure and log what needs logging; returns the delay to wait."""
        fault = classify(exc)
        now = time.monotonic()
        level = logging.WARNING if fault.transient else logging.ERROR
        if self.failures == 0:
            self.since = self._reminded = now
            self.log.log(level, "%s: %s; retrying", self.what, describe(exc))
        elif fault is not self.last:
            self.log.log(level, "%s: now %s", self.what, describe(exc))
        elif now - self._reminded >= self.remind_s:
            self._reminded = now
            self.log.log(level, "%s: still failing after %.0fs (%d tries): %s", self.what,
                         now - self.since, self.failures + 1, describe(exc))
        self.failures += 1
        self.last = fault
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_s)
        return delay

    async def failed(self, exc: BaseException) -> None:
        await asyncio.sleep(self.note(exc))

    def ok(self) -> None:
        if self.failures:
            self.log.info("%s: Redis answers again after %.1fs (%d failed tries)", self.what,
                          time.monotonic() - self.since, self.failures)
        self.failures = 0
        self._delay = self.first_s
        self.last = None

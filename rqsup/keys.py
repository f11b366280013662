"""The only place Redis key names are built.

Every key of a queue is ``<prefix>:{<queue>}:<suffix>``. The braces are a Redis
Cluster hash tag: all keys of one queue land on one slot, so every script that
touches several of them is cluster-safe. Job keys are ``<base>:job:<id>`` so a
job id can never collide with a queue-level suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Queue-level key suffixes, in the order the scripts' headers refer to them.
QUEUE_SUFFIXES = (
    "id",  # STRING: auto-increment job id counter
    "meta",  # HASH: paused, schema version
    "wait",  # LIST: ready jobs; LPUSH by producers, RPOP by claimers
    "prioritized",  # ZSET: ready jobs with a priority
    "pc",  # STRING: priority counter (FIFO inside one priority)
    "delayed",  # ZSET: score = due time (ms, server clock)
    "active",  # ZSET: score = lease deadline (ms, server clock)
    "completed",  # ZSET: score = finished time (ms)
    "failed",  # ZSET: score = finished time (ms)
    "waiting-children",  # ZSET: parents waiting for children (flows)
    "marker",  # ZSET: wake-up marker for blocked workers
    "events",  # STREAM: capped event log
    "fence",  # STRING: monotonic fencing-token counter
    "stall-check",  # STRING: one stall sweep per interval, cluster-wide
    "idle",  # ZSET: workers blocked for work, "<lease_ms>|<worker id>" -> expiry (ms)
    "limiter",  # STRING: claims in the current rate-limit window (PX = the window)
    "limiter-manual",  # STRING: a manual limit (RateLimited, queue.rate_limit), PX = its end
    "malformed",  # ZSET: ids set aside because their key is not a job hash -> when (ms)
    "malformed-why",  # HASH: id -> why it was set aside
    "workers",  # SET: worker ids that hold (or held) jobs of this queue
)

#: Prefixes a script appends an id to: the only key names a script builds
#: (job ids, worker ids and dedup ids are known only at run time). Scripts get
#: them after the queue keys, in this order.
KEY_PREFIXES = (
    "job:",  # HASH per job: "<base>:job:<id>" (and ":logs", ":deps" ... after it)
    "wake:",  # ZSET per worker: its private wake-up key and hand-off inbox
    "dedup:",  # STRING per dedup id: the id of the job that holds it
    "worker-jobs:",  # SET per worker: the ids it holds active
    "dedup-next:",  # STRING per dedup id: the add kept for after the active job (keep_last)
    "history:",  # HASH per minute: completed/failed counts, wait/run buckets (history.lua)
)

#: Ids set aside in ``malformed`` at most (the oldest go first).
MALFORMED_CAP = 10_000

#: Scheduler keys: the scheduler scripts take them after the standard KEYS
#: (the last two; QueueKeys.scheduler_keys() builds them).
SCHEDULER_SUFFIXES = (
    "schedulers",  # ZSET: scheduler id -> run time (ms) of its pending job (+inf when done)
    "scheduler:",  # prefix of the scheduler hashes: "<base>:scheduler:<id>"
)

_FORBIDDEN_IN_NAMES = set("{}:\r\n\0 ")


def validate_name(kind: str, value: str) -> str:
    """Refuse names that would break the key layout, naming what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")
    bad = sorted(set(value) & _FORBIDDEN_IN_NAMES)
    if bad:
        raise ValueError(f"{kind} {value!r} must not contain {''.join(bad)!r}")
    if len(value) > 200:
        raise ValueError(f"{kind} {value[:20]!r}... is longer than 200 characters")
    return value


def validate_prefix(prefix: str) -> str:
    """A key prefix is a name (as :func:`validate_name`) that may hold one hash
    tag, as BullMQ's ``{bull}``: ``"{bull}"`` or ``"app:{jobs}"`` put every
    queue of the prefix in one Redis Cluster slot (the first ``{...}`` of a
    key is its tag), so a flow may span queues there. Without one, each
    queue is its own slot (``{<queue>}``)."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        head, sep, rest = prefix.partition("{")
        tag, sep2, tail = rest.partition("}")
        if not sep or not sep2 or not tag or "{" in tail or "}" in tail or "}" in head:
            raise ValueError(f"prefix {prefix!r} may hold one hash tag, as '{{bull}}': braces "
                             "must be one pair with a name between them")
        validate_name("prefix", (head + tag + tail).replace(":", "") or "x")
        if any(c in _FORBIDDEN_IN_NAMES - {":"} for c in prefix.replace("{", "").replace("}", "")):
            raise ValueError(f"prefix {prefix!r} must not contain whitespace or NUL")
        return prefix
    return validate_name("prefix", prefix)


def hash_tag(prefix: str) -> str | None:
    """The prefix's own hash tag (``"bull"`` for ``"{bull}"``), or None."""
    start = prefix.find("{")
    return prefix[start + 1:prefix.index("}")] if start >= 0 else None


def job_ref(key: str) -> str:
    """A job key ``<prefix>:{<queue>}:job:<id>`` -> ``<queue>:<id>``, how
    flows name a child (the last brace pair: a prefix may hold its own)."""
    head, sep, job_id = key.partition("}:job:")
    if not sep:
        return key
    return head[head.rindex("{") + 1:] + ":" + job_id


def validate_job_id(job_id: str) -> str:
    """A custom job id is any short string without ':' or whitespace.

    Purely numeric custom ids are refused: they could collide with the
    auto-increment counter (BullMQ has the same rule).
    """
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    if job_id.isdigit():
        raise ValueError(f"job_id {job_id!r} must not be all digits (reserved for auto ids)")
    if job_id.startswith("#"):
        raise ValueError(f"job_id {job_id!r} must not start with '#' (reserved for the auto "
                         "ids of partitioned queues)")
    bad = sorted(set(job_id) & _FORBIDDEN_IN_NAMES)
    if bad:
        raise ValueError(f"job_id {job_id!r} must not contain {''.join(bad)!r}")
    if len(job_id) > 200:
        raise ValueError(f"job_id {job_id[:20]!r}... is longer than 200 characters")
    return job_id


def validate_dedup_id(dedup_id: str) -> str:
    """A deduplication id is any short string without line breaks or NUL.

    It only ever ends a key (``...:dedup:<id>``), so ':' and spaces are fine
    ("user:7" is a natural id).
    """
    if not isinstance(dedup_id, str) or not dedup_id:
        raise ValueError(f"dedup id must be a non-empty string, got {dedup_id!r}")
    bad = sorted(set(dedup_id) & set("\r\n\0"))
    if bad:
        raise ValueError(f"dedup id {dedup_id!r} must not contain {''.join(bad)!r}")
    if len(dedup_id) > 200:
        raise ValueError(f"dedup id {dedup_id[:20]!r}... is longer than 200 characters")
    return dedup_id


@dataclass(frozen=True)
class QueueKeys:
    """Key names of one queue. Build once per queue, reuse everywhere."""

    prefix: str
    queue: str

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        validate_name("queue name", self.queue)

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    def key(self, suffix: str) -> str:
        return f"{self.base}:{suffix}"

    def job(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}"

    def logs(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}:logs"

    def job_part(self, job_id: str, part: str) -> str:
        """A parent's flow keys (includes/flow.lua): ``deps`` (SET of the
        children not finished), ``processed`` (HASH of their values),
        ``ignored`` and ``failed_children`` (HASHes of reasons)."""
        if part not in ("deps", "processed", "ignored", "failed_children"):
            raise ValueError(f"no job key part {part!r}")
        return f"{self.base}:job:{job_id}:{part}"

    def prefixed(self, prefix: str) -> str:
        """One of :data:`KEY_PREFIXES` of this queue."""
        return f"{self.base}:{prefix}"

    def worker_jobs(self, worker_id: str) -> str:
        """The ids a worker holds active (SET), kept by the scripts, so that giving
        back a worker's jobs costs its own jobs, not the whole active set."""
        return f"{self.base}:worker-jobs:{worker_id}"

    def reply(self, token: str) -> str:
        """A call's reply list (request/response): its job's outcome is pushed
        there when the job ends (answer_call, common.lua)."""
        return f"{self.base}:reply:{token}"

    def worker_wake(self, worker_id: str) -> str:
        """A worker's private wake-up key: it blocks on it beside the marker, so
        its own close can wake it (a marker wake may go to another worker)."""
        return f"{self.base}:wake:{worker_id}"

    def dedup(self, dedup_id: str) -> str:
        """A deduplication key (STRING: the id of the job that holds it)."""
        return f"{self.base}:dedup:{dedup_id}"

    def history(self, minute: int) -> str:
        """One minute of the queue's history (HASH, includes/history.lua)."""
        return f"{self.base}:history:{minute}"

    def dedup_next(self, dedup_id: str) -> str:
        """The add kept by ``keep_last_if_active`` (STRING, JSON of add.lua's
        values), created when the job holding the dedup id finishes."""
        return f"{self.base}:dedup-next:{dedup_id}"

    def scheduler(self, scheduler_id: str) -> str:
        """One scheduler's hash (its definition, pending run and counters)."""
        return f"{self.base}:scheduler:{scheduler_id}"

    @property
    def schedulers(self) -> str:
        """ZSET of scheduler ids by the run time of their pending job."""
        return self.key(SCHEDULER_SUFFIXES[0])

    def scheduler_keys(self) -> tuple[str, str]:
        """The extra KEYS of the scheduler scripts: the zset, then the hash prefix."""
        return (self.schedulers, self.key(SCHEDULER_SUFFIXES[1]))

    @property
    def job_prefix(self) -> str:
        """Prefix that scripts append a job id to (they never invent other keys)."""
        return f"{self.base}:job:"

    def glob(self) -> str:
        """SCAN pattern matching every key of this queue."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.base)
        return escaped + ":*"

    # Named accessors for readability at call sites.
    @property
    def id(self) -> str:
        return self.key("id")

    @property
    def meta(self) -> str:
        return self.key("meta")

    @property
    def wait(self) -> str:
        return self.key("wait")

    @property
    def prioritized(self) -> str:
        return self.key("prioritized")

    @property
    def pc(self) -> str:
        return self.key("pc")

    @property
    def delayed(self) -> str:
        return self.key("delayed")

    @property
    def active(self) -> str:
        return self.key("active")

    @property
    def completed(self) -> str:
        return self.key("completed")

    @property
    def failed(self) -> str:
        return self.key("failed")

    @property
    def waiting_children(self) -> str:
        return self.key("waiting-children")

    @property
    def marker(self) -> str:
        return self.key("marker")

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel (not a key) on which cancel.lua tells workers."""
        return self.key("cancel")

    @property
    def fence(self) -> str:
        return self.key("fence")

    @property
    def stall_check(self) -> str:
        return self.key("stall-check")

    @property
    def idle(self) -> str:
        return self.key("idle")

    @property
    def malformed(self) -> str:
        return self.key("malformed")

    @property
    def malformed_why(self) -> str:
        return self.key("malformed-why")

    @property
    def workers(self) -> str:
        return self.key("workers")

    @property
    def limiter(self) -> str:
        return self.key("limiter")

    @property
    def limiter_manual(self) -> str:
        return self.key("limiter-manual")


def supervisor_key(prefix: str, name: str) -> str:
    """A supervisor's identity and heartbeat (STRING, JSON, with a TTL)."""
    return f"{prefix}:supervisor:{name}"


def roster_key(prefix: str) -> str:
    """Every live heartbeat under ``prefix`` (ZSET: member = the heartbeat
    key after ``<prefix>:``, score = when it expires, ms): how
    ``get_workers`` finds supervisors and workers without SCAN or CLIENT LIST."""
    return f"{prefix}:roster"


def worker_key(prefix: str, worker_id: str) -> str:
    """A standalone Worker's heartbeat (STRING, JSON, with a TTL); a worker
    run by a supervisor is listed in the supervisor's heartbeat instead."""
    return f"{prefix}:worker:{worker_id}"


def supervisor_glob(prefix: str) -> str:
    """SCAN pattern of every supervisor's heartbeat key under ``prefix``."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return f"{escaped}:supervisor:*"

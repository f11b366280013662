"""The supervisor's TOML config, validated into frozen dataclasses.

All validation lives here so that ``rqsup check`` and ``rqsup start`` refuse a
bad file before anything runs. Every problem is collected (an operator fixes a
file once, not once per error) and raised as one :class:`ConfigError` whose
lines name the file and the dotted key. TOML keys carry no units because the
values do (``lease = "30s"``, ``memory_hard = "2GiB"``); the attributes carry
them in their names (``lease_s``, ``memory_hard_bytes``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from rqsup.config import units
from rqsup.config.dashboard import DashboardConfig, parse_dashboard
from rqsup.config.schedulers import SchedulerConfig, parse_schedulers
from rqsup.config.tomltable import (
    Problems,
    Table,
    as_toml,
    boolean,
    choice,
    duration,
    integer,
    size,
    string,
)
from rqsup.config.units import parse_listen
from rqsup.config.values import (
    JOB_DEFAULT_KEYS,
    account,
    check_url,
    directories,
    env_table,
    existing_file,
    host_ports,
    job_defaults,
    job_option_seconds,
)
from rqsup.config.values import processor as processor_spec
from rqsup.errors import ConfigError
from rqsup.keys import validate_name, validate_prefix
from rqsup.queue import options as options_mod
from rqsup.queue.endpoints import from_parts, is_tls

__all__ = [
    "Config", "ConfigError", "QueueConfig", "RedisConfig", "SandboxConfig", "SchedulerConfig",
    "SupervisorConfig", "load_config", "parse_config", "redact_url",
]

MODES = ("process", "thread", "async")
ISOLATIONS = ("pooled", "per-job")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Options that only mean something when a job is added, so a supervisor
#: cannot default them.
_ADD_TIME_OPTIONS = {
    "delay": "delay is chosen when a job is added; it cannot be a queue default here",
    "priority": "priority is chosen when a job is added; it cannot be a queue default here",
    "lifo": "lifo is chosen when a job is added; it cannot be a queue default here",
    "job_id": "job_id cannot be a queue-wide default",
}


@dataclass(frozen=True, repr=False)
class RedisConfig:
    """``[redis]``: where jobs live. The URL may hold a password: use
    :attr:`redacted_url` for anything a person or a log may see."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "rqsup"
    ssl_ca_certs: Path | None = None
    start_private: bool = False
    private_dir: Path = Path("var/redis")
    #: After the writes that matter (add, complete, fail), WAIT until this
    #: many replicas have them (0: Redis's asynchronous replication only).
    wait_replicas: int = 0

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (
            f"RedisConfig(url={self.redacted_url!r}, prefix={self.prefix!r}, "
            f"ssl_ca_certs={self.ssl_ca_certs!r}, start_private={self.start_private!r}, "
            f"private_dir={self.private_dir!r}, wait_replicas={self.wait_replicas!r})"
        )


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (``listen`` None: off)."""

    listen: str | None = None
    #: Export the queues' gauges here too (off when ``rqsup metrics`` serves
    #: them for every queue, so they are not exported once per supervisor).
    queue_gauges: bool = True
    #: How long each queue keeps its per-minute history in Redis (0: none).
    history_s: float = 7 * 86400.0


@dataclass(frozen=True)
class SupervisorConfig:
    """``[supervisor]``: identity, leases, stalls, shutdown and health."""

    name: str
    shutdown_grace_s: float = 30.0
    lease_s: float = 30.0
    renew_interval_s: float = 10.0
    stall_interval_s: float = 15.0
    max_stalled_count: int = 1
    log_format: str = "text"
    log_level: str = "info"
    status_interval_s: float = 10.0
    max_loop_lag_s: float = 2.0
    block_timeout_s: float = 5.0
    #: Where processors are imported from, after the standard library and the
    #: installed packages (never the working directory): the config file's
    #: folder by default.
    processor_path: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SandboxConfig:
    """``[queues.sandbox]``: how the child processes of a process-mode queue run.
    ``None`` means "no limit" (or "do not change")."""

    isolation: str = "pooled"
    memory_soft_bytes: int | None = None
    memory_hard_bytes: int | None = None
    max_jobs_per_child: int | None = None
    idle_timeout_s: float | None = None
    boot_timeout_s: float = 10.0
    nice: int = 5
    user: str | None = None
    group: str | None = None
    rlimit_nofile: int | None = None
    rlimit_core_bytes: int | None = 0
    rlimit_as_bytes: int | None = None
    kill_grace_s: float = 2.0
    #: How long a cancelled job's processor may go on before its child is killed.
    cancel_grace_s: float = 5.0
    #: Added to each child's scrubbed environment.
    env: tuple[tuple[str, str], ...] = ()
    #: Caps on what a child sends: its captured stdout and stderr per job, one
    #: line of it, a job's result, and a job.log() line.
    max_output_bytes: int = 1 << 20
    max_output_line_bytes: int = 16 << 10
    max_result_bytes: int = 16 << 20
    max_log_line_bytes: int = 16 << 10


@dataclass(frozen=True)
class QueueConfig:
    """``[[queues]]``: one queue served by this supervisor.

    ``defaults`` holds job options in the producer's form (durations in
    seconds), already validated by the producer's own code.
    """

    name: str
    processor: str
    mode: str = "process"
    concurrency: int = 1
    defaults: dict[str, Any] = field(default_factory=dict)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    #: Queue-wide limits, across every supervisor (applied at start and reload):
    #: at most rate_limit_max claims per rate_limit_duration_s, at most
    #: global_concurrency active jobs. None: no limit from this config.
    rate_limit_max: int | None = None
    rate_limit_duration_s: float | None = None
    global_concurrency: int | None = None

    @property
    def processor_module(self) -> str:
        return self.processor.partition(":")[0]

    @property
    def processor_attr(self) -> str:
        return self.processor.partition(":")[2]

    @property
    def job_defaults(self) -> options_mod.JobOptions:
        """The defaults as normalised :class:`JobOptions` (milliseconds, retention dicts)."""
        return options_mod.build({}, self.defaults)[1]


@dataclass(frozen=True)
class Config:
    """One config file: Redis, the supervisor, its queues and schedulers."""

    path: Path
    redis: RedisConfig
    supervisor: SupervisorConfig
    queues: tuple[QueueConfig, ...]
    schedulers: tuple[SchedulerConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)


# -- loading -------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises :class:`ConfigError` listing every problem."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError([f"{shown}: cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{shown}: not UTF-8 text (byte {exc.start}): TOML files are "
                           "UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{shown}: not valid TOML: {exc}"]) from None
    return parse_config(raw, Path(path))


def parse_config(raw: Mapping[str, Any], path: Path) -> Config:
    """Validate already-parsed TOML; ``path`` names the file in messages and
    anchors relative paths (``private_dir``, ``ssl_ca_certs``)."""
    problems = Problems(os.fspath(path))
    top = Table(raw, "", ("redis", "supervisor", "queues", "schedulers", "metrics",
                          "dashboard"), problems)
    base_dir = path.resolve().parent
    redis_cfg = _redis(top.table("redis", _REDIS_KEYS), base_dir)
    supervisor = _supervisor(top.table("supervisor", _SUPERVISOR_KEYS), base_dir)
    queues = _queues(top, problems)
    schedulers = parse_schedulers(top, problems, job_option_seconds)
    metrics = _metrics(top.table("metrics", ("listen", "queue_gauges", "history")))
    dashboard = parse_dashboard(top, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(path=path.resolve(), redis=redis_cfg, supervisor=supervisor, queues=queues,
                  schedulers=schedulers, metrics=metrics, dashboard=dashboard)


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('must be host:port such as "127.0.0.1:9464"')
    try:
        parse_listen(value)
    except ValueError:
        raise ValueError('must be host:port such as "127.0.0.1:9464"') from None
    return value


def _metrics(t: Table) -> MetricsConfig:
    return MetricsConfig(listen=t.get("listen", _listen, None),
                         queue_gauges=t.get("queue_gauges", boolean, True),
                         history_s=t.get("history", duration(max_s=366 * DAY), 7 * DAY))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (secrets never reach logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if "password" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if "password" in k else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Built by hand: urlunsplit would turn unix:///path into unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


# -- sections ------------------------------------------------------------------


_SUPERVISOR_KEYS = (
    "name", "shutdown_grace", "lease", "renew_interval", "stall_interval", "max_stalled_count",
    "log_format", "log_level", "status_interval", "max_loop_lag", "block_timeout",
    "processor_path",
)
_QUEUE_KEYS = ("name", "processor", "mode", "concurrency", "defaults", "sandbox",
               "rate_limit", "global_concurrency", "partitions")
_RATE_LIMIT_KEYS = ("max", "duration")
_SANDBOX_KEYS = (
    "isolation", "memory_soft", "memory_hard", "max_jobs_per_child", "idle_timeout",
    "boot_timeout", "nice", "user", "group", "rlimit_nofile", "rlimit_core", "rlimit_as",
    "kill_grace", "cancel_grace", "env", "max_output", "max_output_line", "max_result",
    "max_log_line",
)
#: Bounds: a value past them is surely a typo (a "1ms" status interval would
#: spin; a "30d" lease would hide a dead worker for a month).
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


_REDIS_KEYS = ("url", "prefix", "ssl_ca_certs", "start_private", "private_dir",
               "cluster_nodes", "sentinels", "master", "db", "tls", "wait_replicas")


def _url_from_parts(t: Table) -> str | None:
    """``cluster_nodes = [...]`` or ``sentinels = [...]`` + ``master``: the
    same thing as a redis+cluster:// or redis+sentinel:// url."""
    nodes = t.get("cluster_nodes", host_ports, None)
    sentinels = t.get("sentinels", host_ports, None)
    master = t.get("master", string, None)
    db = t.get("db", integer(0, 10_000), 0)
    tls = t.get("tls", boolean, False)
    given = [k for k in ("url", "cluster_nodes", "sentinels") if k in t.raw]
    if len(given) > 1:
        t.problem(given[1], f"give one of url, cluster_nodes and sentinels, not {given}")
        return None
    if master is not None and sentinels is None:
        t.problem("master", "only applies with sentinels = [...]")
    if nodes is not None:
        if db:
            t.problem("db", "a Redis Cluster has only database 0")
        return from_parts("cluster", nodes, tls=tls)
    if sentinels is not None:
        if master is None:
            t.problem("master", "is required with sentinels = [...]: the name the sentinels "
                                "monitor the primary under")
            return None
        return from_parts("sentinel", sentinels, master=master, db=db, tls=tls)
    for key in ("db", "tls"):
        if key in t.raw:
            t.problem(key, "only applies with cluster_nodes or sentinels (put it in the url)")
    return None


def _redis(t: Table, base_dir: Path) -> RedisConfig:
    url = _url_from_parts(t) or t.get("url", check_url, RedisConfig.url, show=_show_url)
    prefix = t.get("prefix", validate_prefix, "rqsup", show=None)
    ca = t.get("ssl_ca_certs", lambda v: existing_file(v, base_dir), None)
    if ca is not None and not is_tls(url):
        t.problem("ssl_ca_certs", "only applies to TLS: use a rediss:// url (or tls = true)")
    wait_replicas = t.get("wait_replicas", integer(0, 16), 0)
    start_private = t.get("start_private", boolean, False)
    private_dir = t.get("private_dir", string, "var/redis")
    return RedisConfig(
        url=url,
        prefix=prefix,
        ssl_ca_certs=ca,
        start_private=start_private,
        private_dir=(base_dir / Path(private_dir).expanduser()).resolve(),
        wait_replicas=wait_replicas,
    )


def _supervisor(t: Table, base_dir: Path) -> SupervisorConfig:
    name = t.require("name", lambda v: validate_name("supervisor name", v), "", show=None)
    lease = t.get("lease", duration(min_s=1.0, max_s=DAY), 30.0)
    renew = t.get("renew_interval", duration(min_s=0.1, max_s=HOUR), None)
    if renew is None:
        renew = lease / 3
    elif renew >= lease:
        t.problem("renew_interval", f"must be shorter than lease ({units.format_duration(lease)})"
                                    f", got {units.format_duration(renew)}")
    return SupervisorConfig(
        name=name,
        shutdown_grace_s=t.get("shutdown_grace", duration(max_s=DAY), 30.0),
        lease_s=lease,
        renew_interval_s=renew,
        stall_interval_s=t.get("stall_interval", duration(min_s=0.1, max_s=HOUR), 15.0),
        max_stalled_count=t.get("max_stalled_count", integer(0, 1000), 1),
        log_format=t.get("log_format", choice(LOG_FORMATS), "text"),
        log_level=t.get("log_level", choice(LOG_LEVELS, fold=True), "info"),
        status_interval_s=t.get("status_interval", duration(min_s=0.1, max_s=HOUR), 10.0),
        max_loop_lag_s=t.get("max_loop_lag", duration(min_s=0.01, max_s=HOUR), 2.0),
        block_timeout_s=t.get("block_timeout", duration(min_s=0.1, max_s=HOUR), 5.0),
        processor_path=t.get("processor_path", directories(base_dir), (base_dir,), show=None),
    )


def _queues(top: Table, problems: Problems) -> tuple[QueueConfig, ...]:
    raw = top.raw.get("queues")
    if raw is None:
        top.problem("queues", "at least one queue is required: add a [[queues]] table")
        return ()
    if isinstance(raw, dict):
        top.problem("queues", "must be an array of tables: write [[queues]], not [queues]")
        return ()
    if not isinstance(raw, list) or not raw:
        top.problem("queues", "at least one queue is required: add a [[queues]] table")
        return ()
    out: list[QueueConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(item, f"queues[{i}]", _QUEUE_KEYS, problems)
        queue = _queue(t)
        if queue.name in seen:
            problems.add(f"queues[{i}].name", f"duplicate queue name {as_toml(queue.name)} "
                                              f"(also queues[{seen[queue.name]}].name)")
        elif queue.name:
            seen[queue.name] = i
        out.extend(_partitions(t, queue))
    return tuple(out)


def _partitions(t: Table, q: QueueConfig) -> list[QueueConfig]:
    """``partitions = N``: the queue's N partitions (``<name>#0`` ..), each
    served like a queue of its own with a share of the concurrency and of
    the queue-wide limits; the shares sum to the configured values."""
    n = t.get("partitions", integer(1, 1024), 1)
    if n == 1:
        return [q]
    for key, value in (("concurrency", q.concurrency), ("global_concurrency",
                       q.global_concurrency), ("rate_limit.max", q.rate_limit_max)):
        if value is not None and value < n:
            t.problem(key, f"{value} is less than partitions ({n}): each partition gets a "
                           "share of it, at least 1")
            return [q]

    def share(total: int | None, i: int) -> int | None:
        return None if total is None else total // n + (1 if i < total % n else 0)

    return [replace(q, name=f"{q.name}#{i}", concurrency=share(q.concurrency, i) or 1,
                    global_concurrency=share(q.global_concurrency, i),
                    rate_limit_max=share(q.rate_limit_max, i)) for i in range(n)]


def _queue(t: Table) -> QueueConfig:
    name = t.require("name", lambda v: validate_name("queue name", v), "", show=None)
    processor = t.require("processor", processor_spec, "")
    mode = t.get("mode", choice(MODES), "process")
    concurrency = t.get("concurrency", integer(1, 10_000), 1)
    defaults = job_defaults(t.table("defaults", JOB_DEFAULT_KEYS, refused=_ADD_TIME_OPTIONS))
    sandbox = SandboxConfig()
    if "sandbox" in t.raw:
        if mode != "process":
            t.problem("sandbox", f'only applies to mode = "process"; this queue has mode = '
                                 f'"{mode}" (remove the [queues.sandbox] table)')
        sandbox = _sandbox(t.table("sandbox", _SANDBOX_KEYS))
    rate_max: int | None = None
    rate_window: float | None = None
    if "rate_limit" in t.raw:
        rl = t.table("rate_limit", _RATE_LIMIT_KEYS)
        rate_max = rl.require("max", integer(1), None)
        rate_window = rl.require("duration", duration(min_s=0.001, max_s=DAY), None)
    return QueueConfig(name=name, processor=processor, mode=mode, concurrency=concurrency,
                       defaults=defaults, sandbox=sandbox, rate_limit_max=rate_max,
                       rate_limit_duration_s=rate_window,
                       global_concurrency=t.get("global_concurrency", integer(1, 1_000_000),
                                                None))


def _sandbox(t: Table) -> SandboxConfig:
    isolation = t.get("isolation", choice(ISOLATIONS), "pooled")
    soft = t.get("memory_soft", size(minimum=1), None)
    hard = t.get("memory_hard", size(minimum=1), None)
    if soft is not None and hard is not None and hard <= soft:
        t.problem("memory_hard", f"must be greater than memory_soft ({units.format_size(soft)})"
                                 f", got {units.format_size(hard)}")
    max_jobs = t.get("max_jobs_per_child", integer(1), None)
    if isolation == "per-job" and max_jobs is not None:
        t.problem("max_jobs_per_child", 'does not apply with isolation = "per-job" '
                                        "(every child runs one job)")
    return SandboxConfig(
        isolation=isolation,
        memory_soft_bytes=soft,
        memory_hard_bytes=hard,
        max_jobs_per_child=max_jobs,
        idle_timeout_s=t.get("idle_timeout", duration(min_s=1.0, max_s=DAY), None),
        boot_timeout_s=t.get("boot_timeout", duration(min_s=0.1, max_s=HOUR), 10.0),
        nice=t.get("nice", integer(0, 19), 5),
        user=t.get("user", account("user"), None, show=None),
        group=t.get("group", account("group"), None, show=None),
        rlimit_nofile=t.get("rlimit_nofile", integer(1), None),
        rlimit_core_bytes=t.get("rlimit_core", size(), 0),
        rlimit_as_bytes=t.get("rlimit_as", size(minimum=1), None),
        kill_grace_s=t.get("kill_grace", duration(max_s=HOUR), 2.0),
        cancel_grace_s=t.get("cancel_grace", duration(max_s=DAY), 5.0),
        env=t.get("env", env_table, (), show=None),
        max_output_bytes=t.get("max_output", size(minimum=0), 1 << 20),
        max_output_line_bytes=t.get("max_output_line", size(minimum=80), 16 << 10),
        max_result_bytes=t.get("max_result", size(minimum=1 << 10, maximum=512 << 20),
                               16 << 20),
        max_log_line_bytes=t.get("max_log_line", size(minimum=80), 16 << 10),
    )


def _show_url(value: Any) -> str:
    return as_toml(redact_url(value)) if isinstance(value, str) else as_toml(value)



"""``rqsup check``: what an operator wants to know before ``rqsup start``.

Each processor is imported in a fresh child (``python -m rqsup.cli.check probe
module:attr mode``), as the supervisor's children will import it: an import
that fails, hangs or kills its process is reported against its queue, and the
checking process keeps no state from it. The child side of this module
imports neither redis nor asyncio; redis is imported only by the parent's
Redis checks.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rqsup.config.model import Config, QueueConfig

OK = "ok"
WARN = "warn"
FAIL = "FAIL"

#: Script flags (``#!lua flags=allow-oom`` on renew and the heartbeat) need 7.0.
MIN_REDIS = (7, 0)
RECOMMENDED_REDIS = (7, 0)
REDIS_TIMEOUT_S = 3.0
#: How long a probe may take when the queue sets no boot timeout of its own.
PROBE_TIMEOUT_S = 30.0
_PROBE_OUTPUT_MARKER = "rqsup-probe:"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: what was checked, the verdict and why."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str

    @property
    def passed(self) -> bool:
        return self.status != FAIL

    def line(self) -> str:
        return f"{self.status:<5} {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(config: Config) -> list[CheckResult]:
    """Every check for one loaded config, in report order."""
    results = check_processors(config.queues, config.supervisor.processor_path)
    results += check_sandbox_users(config.queues)
    results += check_schedulers(config)
    results += check_redis(config)
    return results


def add_processor_path(path: Any) -> None:
    """Processors are found after the standard library and the installed
    packages, on the configured path, and never in the working directory: a
    ``psutil.py`` there must not shadow the real one (nor rqsup's own)."""
    for entry in ("", "."):
        while entry in sys.path:
            sys.path.remove(entry)
    for p in path:
        if str(p) not in sys.path:
            sys.path.append(str(p))


def check_schedulers(config: Config) -> list[CheckResult]:
    """Each ``[[schedulers]]`` table: its next run (by this machine's clock), and
    a warning when no ``[[queues]]`` of this file serves its queue."""
    import time

    from rqsup.config.units import format_duration
    from rqsup.queue.schedule import Schedule

    served = {q.name for q in config.queues}
    results = []
    for s in config.schedulers:
        schedule = Schedule.build(cron=s.cron, every=s.every_s, tz=s.tz, start=s.start_ms,
                                  end=s.end_ms, limit=s.limit)
        what = f"cron {s.cron!r}" + (f" ({s.tz})" if s.tz else "") if s.cron else \
            f"every {format_duration(s.every_s or 0)}"
        first = schedule.first_run(int(time.time() * 1000))
        when = "no run (past its end)" if first is None else "first run " + \
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first / 1000))
        name = f"scheduler {s.id}"
        if s.queue in served:
            results.append(CheckResult(name, OK, f"queue {s.queue}, {what}, {when}"))
        else:
            results.append(CheckResult(name, WARN, f"queue {s.queue} is not served by this "
                                                   f"config: another supervisor must run it; "
                                                   f"{what}, {when}"))
    return results


# -- processors ------------------------------------------------------------------


def check_processors(queues: tuple[QueueConfig, ...],
                     path: tuple[Any, ...] = ()) -> list[CheckResult]:
    """Probe every queue's processor, all children at once, on the path the
    supervisor uses: ``path`` after the installed packages, and never the
    working directory (``-P``)."""
    running = []
    search = os.pathsep.join(str(p) for p in path)
    for queue in queues:
        timeout = queue.sandbox.boot_timeout_s if queue.mode == "process" else PROBE_TIMEOUT_S
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "rqsup.cli.check", "probe", queue.processor, queue.mode,
             search],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        running.append((queue, proc, timeout))
    results = []
    for queue, proc, timeout in running:
        name = f"queue {queue.name}"
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append(CheckResult(name, FAIL, f"processor {queue.processor}: importing it "
                                                   f"took longer than {timeout:g}s"))
            continue
        verdict = _probe_verdict(out)
        if verdict is None:
            tail = err.strip().splitlines()[-3:]
            results.append(CheckResult(name, FAIL, (
                f"processor {queue.processor}: the import ended its process "
                f"(exit code {proc.returncode})" + (": " + " | ".join(tail) if tail else "")
            )))
        elif verdict["ok"]:
            results.append(CheckResult(name, OK, f"processor {queue.processor} "
                                                 f"({queue.mode}, {verdict['detail']})"))
        else:
            results.append(CheckResult(name, FAIL, f"processor {queue.processor}: "
                                                   f"{verdict['detail']}"))
    return results


def _probe_verdict(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_PROBE_OUTPUT_MARKER):
            verdict: dict[str, Any] = json.loads(line[len(_PROBE_OUTPUT_MARKER):])
            return verdict
    return None


def probe(spec: str, mode: str) -> dict[str, Any]:
    """Import ``module:attr`` here and judge it for ``mode`` (runs in the child)."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as exc:  # anything the import raises (SystemExit too) is the finding
        return {"ok": False, "detail": f"import failed: {type(exc).__name__}: {exc}"}
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return {"ok": False, "detail": f"module {module_name} has no attribute {attr_path!r}"}
    if not callable(obj):
        return {"ok": False, "detail": f"{attr_path} is not callable "
                                       f"(it is a {type(obj).__name__})"}
    is_coro = inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )
    if mode == "async" and not is_coro:
        return {"ok": False, "detail": 'mode "async" needs a coroutine function '
                                       "(async def), got a plain callable"}
    if mode != "async" and is_coro:
        return {"ok": False, "detail": f'mode "{mode}" needs a plain function, got a '
                                       'coroutine function (use mode = "async")'}
    return {"ok": True, "detail": "coroutine function" if is_coro else "callable"}


def _probe_main(argv: list[str]) -> int:
    """Child entry point. Whatever the import prints goes to stderr; the
    verdict is the one marked line on the real stdout."""
    if len(argv) not in (3, 4) or argv[0] != "probe":
        print("usage: python -P -m rqsup.cli.check probe module:attr mode [path]", file=sys.stderr)
        return 2
    if len(argv) == 4:
        add_processor_path(p for p in argv[3].split(os.pathsep) if p)
    verdict_fd = os.dup(1)
    os.dup2(2, 1)
    verdict = probe(argv[1], argv[2])
    with os.fdopen(verdict_fd, "w") as out:
        out.write(_PROBE_OUTPUT_MARKER + json.dumps(verdict) + "\n")
    return 0


# -- sandbox users ---------------------------------------------------------------


def check_sandbox_users(queues: tuple[QueueConfig, ...]) -> list[CheckResult]:
    """Dropping children to another user needs root; say so before start fails."""
    results = []
    for queue in queues:
        box = queue.sandbox
        if queue.mode != "process" or (box.user is None and box.group is None):
            continue
        from rqsup.sandbox.hygiene import resolve_account

        # The very resolution a child uses (names or numbers; the user's
        # primary group when no group is given).
        uid, gid, _name = resolve_account(box.user, box.group)
        needs_root = (uid is not None and uid != os.geteuid()) or (
            gid is not None and gid != os.getegid()
        )
        name = f"queue {queue.name} sandbox"
        account = " and ".join(
            f"{kind} {value}" for kind, value in (("user", box.user), ("group", box.group))
            if value is not None
        )
        if needs_root and os.geteuid() != 0:
            results.append(CheckResult(name, FAIL, f"{account}: dropping children to it "
                                                   "needs the supervisor to run as root"))
        else:
            results.append(CheckResult(name, OK, f"children run as uid {uid}, gid {gid}"))
    return results


# -- redis ---------------------------------------------------------------------


def check_redis(config: Config) -> list[CheckResult]:
    """Reachable, recent enough, and never evicting job keys."""
    import redis  # only the parent talks to Redis

    from rqsup.queue.connection import sync_client

    rc = config.redis
    name = f"redis {rc.redacted_url}"
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "socket_timeout": REDIS_TIMEOUT_S,
    }
    if rc.ssl_ca_certs is not None:
        kwargs["ssl_ca_certs"] = str(rc.ssl_ca_certs)
    client = sync_client(rc.url, **kwargs)
    try:
        try:
            client.ping()
            nodes = _per_node(client.info("server"))
            for node, mem in _per_node(client.info("memory")).items():
                nodes.setdefault(node, {}).update(mem)
        except redis.AuthenticationError as exc:
            return [CheckResult(name, FAIL, f"authentication failed: {exc}")]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return [_unreachable(config, name, exc)]
        except redis.ResponseError as exc:
            return [CheckResult(name, FAIL, f"refused: {exc}")]
    finally:
        client.close()
    reach = "reachable" if len(nodes) == 1 else f"reachable: {len(nodes)} Cluster nodes"
    versions = {n: str(i.get("redis_version", "0")) for n, i in nodes.items()}
    oldest = min(versions, key=lambda n: _version_tuple(versions[n]))
    version = _version_result(versions[oldest])
    if len(nodes) > 1 and version.status != OK:
        version = CheckResult(version.name, version.status, f"{version.detail} (on {oldest})")
    policies = {n: str(i.get("maxmemory_policy", "unknown")) for n, i in nodes.items()}
    bad = sorted(n for n, p in policies.items() if p != "noeviction")
    policy = _policy_result(policies[bad[0]] if bad else "noeviction")
    if len(nodes) > 1 and bad:
        policy = CheckResult(policy.name, policy.status, f"{policy.detail} (on {', '.join(bad)})")
    return [CheckResult(name, OK, reach), version, policy]


def _per_node(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A Cluster client answers INFO with {node: info}; a single one with info."""
    if info and all(isinstance(v, dict) for v in info.values()) and "redis_version" not in info:
        return {str(k): dict(v) for k, v in info.items()}
    return {"redis": dict(info)}


def _unreachable(config: Config, name: str, exc: BaseException) -> CheckResult:
    if not config.redis.start_private:
        return CheckResult(name, FAIL, f"unreachable: {exc}")
    if shutil.which("redis-server") is None:
        return CheckResult(name, FAIL, "unreachable, and no redis-server binary to start a "
                                       "private one (apt-get install redis-server)")
    return CheckResult(name, OK, "unreachable; start will run a private redis-server "
                                 f"(data in {config.redis.private_dir})")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def _version_result(version: str) -> CheckResult:
    parts = _version_tuple(version)
    if parts < MIN_REDIS:
        return CheckResult("redis version", FAIL, f"{version}: rqsup needs Redis 7.0 or newer")
    if parts < RECOMMENDED_REDIS:
        return CheckResult("redis version", WARN, f"{version}: works, 7.x is recommended")
    return CheckResult("redis version", OK, version)


def _policy_result(policy: str) -> CheckResult:
    if policy == "noeviction":
        return CheckResult("redis maxmemory-policy", OK, policy)
    return CheckResult("redis maxmemory-policy", FAIL, (
        f"{policy}: Redis may evict job keys when memory is full (jobs lost); "
        "set maxmemory-policy noeviction"
    ))


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))

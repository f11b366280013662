"""Admin commands of ``rqsup``: look at queues and act on them from a shell.

    rqsup status --config configs/prod.toml
    rqsup jobs reports --state failed --url redis://host/0 --json
    rqsup enqueue reports render '{"id": 7}' --attempts 3
    rqsup pause reports / resume / retry / promote / clean / events

Redis comes from ``--config`` (its [redis] url and prefix, and its queues for
``status``) or from ``--url``/``--prefix``. Read commands take ``--json``.
Only click is imported here; the library loads when a command runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rqsup.queue.job import Job
    from rqsup.queue.queue import Queue

STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config / --url / --prefix: where the queues live."""
    fn = click.option("--prefix", default=None, envvar="RQSUP_PREFIX",
                      help="Key prefix (default: $RQSUP_PREFIX, the config's, or rqsup).")(fn)
    fn = click.option("--url", default=None, envvar="RQSUP_URL",
                      help="Redis URL (default: $RQSUP_URL, the config's, or "
                           "redis://127.0.0.1:6379/0; the variable keeps a password off "
                           "the command line).")(fn)
    return click.option(
        "--config", "config", default=None,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A supervisor config: its [redis] url and prefix, and its queues.",
    )(fn)


#: Connection options from the config of this command (its TLS CA), for opened().
_REDIS_OPTIONS: dict[str, Any] = {}


def _target(config: Path | None, url: str | None, prefix: str | None
            ) -> tuple[str, str, list[str]]:
    queues: list[str] = []
    if config is not None:
        from rqsup.cli.main import _load

        cfg = _load(config)
        url = url or cfg.redis.url
        prefix = prefix or cfg.redis.prefix
        queues = [q.name for q in cfg.queues]
        if cfg.redis.ssl_ca_certs:
            _REDIS_OPTIONS["ssl_ca_certs"] = str(cfg.redis.ssl_ca_certs)
    return url or "redis://127.0.0.1:6379/0", prefix or "rqsup", queues


@contextmanager
def opened(name: str, url: str, prefix: str) -> Iterator[Queue]:
    """A Queue; library errors become one clear line and exit status 1."""
    from rqsup.config.values import check_url
    from rqsup.errors import RqsupError
    from rqsup.queue.connection import CONNECTION_ERRORS, REDIS_ERRORS
    from rqsup.queue.faults import describe
    from rqsup.queue.queue import Queue

    try:
        check_url(url)
    except ValueError as exc:
        raise click.BadParameter(f"{_redact(url)}: {exc}", param_hint="--url") from None
    from rqsup.queue.connection import sync_client

    client = sync_client(url, **_REDIS_OPTIONS)
    try:
        q = Queue(name, connection=client, prefix=prefix)
    except ValueError as exc:  # a bad queue name or prefix
        client.close()
        raise click.BadParameter(str(exc), param_hint="QUEUE or --prefix") from None
    try:
        yield q
    except RqsupError as exc:
        click.echo(f"rqsup: {exc}", err=True)
        sys.exit(1)
    except CONNECTION_ERRORS as exc:
        click.echo(f"rqsup: Redis at {_redact(url)} unreachable: {exc}", err=True)
        sys.exit(1)
    except REDIS_ERRORS as exc:  # out of memory, no permission, a damaged key
        click.echo(f"rqsup: {describe(exc)}", err=True)
        sys.exit(1)
    finally:
        q.close()
        client.close()


def _redact(url: str) -> str:
    from rqsup.config.model import redact_url

    return redact_url(url)


_JOB_FIELDS = ("name", "data", "attempts_made", "progress", "return_value", "failed_reason",
               "error_type", "timestamp_ms", "processed_on_ms", "finished_on_ms", "worker")


def job_json(job: Job) -> dict[str, Any]:
    """A job as JSON; a damaged job shows what could be read, the rest as None,
    and ``problems`` says what is broken."""
    from rqsup.errors import MalformedJob

    out: dict[str, Any] = {"id": job.id}
    for name in _JOB_FIELDS:
        try:
            out[name] = getattr(job, name)
        except MalformedJob:
            out[name] = None
    out["lease"] = job.lease
    problems = job.problems()
    if problems:
        out["problems"] = problems
    return out


def _when(ms: int | None) -> str:
    """A time in ms, in local time with its zone, for people."""
    if ms is None:
        return "-"
    import datetime as dt

    local = dt.datetime.fromtimestamp(ms / 1000).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + local.strftime(" %Z")


def show_job(info: dict[str, Any], stacktrace: str | None) -> None:
    """``rqsup job``: one job for people."""
    click.echo(f"job {info['id']} ({info['name'] or '?'}): {info['state']}, attempts made "
               f"{info['attempts_made']}")
    click.echo(f"  data: {json.dumps(info['data'], default=str)[:500]}")
    for key in ("progress", "return_value"):
        if info.get(key) is not None:
            click.echo(f"  {key}: {json.dumps(info[key], default=str)[:500]}")
    click.echo(f"  added {_when(info['timestamp_ms'])}, started {_when(info['processed_on_ms'])}"
               f", finished {_when(info['finished_on_ms'])}")
    lease = info["lease"]
    click.echo(f"  lease: worker {lease['worker'] or '-'}, pid {lease['holder_pid'] or '-'}, "
               f"last renewed {_when(lease['renewed_at_ms'])}; stalled "
               f"{lease['stalled_count']} time(s), last {_when(lease['stalled_at_ms'])}")
    if info.get("failed_reason"):
        click.echo(f"  error: {info['error_type']}: {info['failed_reason']}")
        if stacktrace:
            click.echo("  " + stacktrace.rstrip().replace("\n", "\n  "))
    logs = info["logs"]
    if logs["count"]:
        click.echo(f"  logs ({logs['count']}):")
        for line in logs["logs"]:
            click.echo(f"    {line}")
    for problem in info.get("problems", []):
        click.echo(f"  BROKEN: {problem}")


def _show_progress(q: Queue, job_id: str, after: str, wait_s: float) -> None:
    """While a job runs, a progress bar (rich, on stderr) from its progress
    events; returns when it ends or the wait is over (the caller then reads
    the result)."""
    import time

    from rich.progress import Progress

    from rqsup.queue.events import parse_entries

    deadline = time.monotonic() + wait_s
    last = after or "$"
    with Progress(transient=True, console=None) as bar:
        task = bar.add_task(f"job {job_id}", total=100)
        while (left := deadline - time.monotonic()) > 0:
            reply: Any = q.client.xread({q.core.keys.events: last}, count=200,
                                        block=max(1, int(min(left, 1.0) * 1000)))
            for _key, entries in reply or []:
                last = entries[-1][0]
                for ev in parse_entries(entries, decode=True):
                    if ev.job_id != job_id:
                        continue
                    if ev.name in ("completed", "failed", "removed"):
                        return
                    value = ev.fields.get("progress")
                    if ev.name == "progress" and isinstance(value, int | float):
                        bar.update(task, completed=float(value))


@contextmanager
def _bar(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar (rich, on stderr) for a long operation, when stderr is a
    terminal and there is much to do; else nothing is shown."""
    if not sys.stderr.isatty() or total < 2000:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _heartbeats(q: Queue, prefix: str) -> list[dict[str, Any]]:
    """The live supervisors under ``prefix``, from their heartbeats."""
    from rqsup.keys import supervisor_glob

    found = []
    for key in q.client.scan_iter(match=supervisor_glob(prefix), count=100):
        raw: Any = q.client.get(key)
        name = key.decode().rsplit(":", 1)[1]
        try:
            info = json.loads(raw) if raw else {}
        except ValueError:
            info = {}
        found.append({**(info if isinstance(info, dict) else {}), "name": name})
    return sorted(found, key=lambda s: s["name"])


def register(main: click.Group) -> None:
    """Add the admin commands to the ``rqsup`` group."""

    @main.command()
    @target_options
    @click.option("--queue", "-q", "names", multiple=True, help="Queue(s) to show "
                  "(default: the config's queues).")
    @click.option("--json", "as_json", is_flag=True)
    def status(config: Path | None, url: str | None, prefix: str | None,
               names: tuple[str, ...], as_json: bool) -> None:
        """Counts, pause state and limits per queue, and the live supervisors."""
        url_, prefix_, queues = _target(config, url, prefix)
        queues = list(names) or queues
        if not queues:
            raise click.UsageError("name the queues with --queue, or give --config")
        out: dict[str, Any] = {"queues": {}, "supervisors": []}
        for name in queues:
            with opened(name, url_, prefix_) as q:
                out["queues"][name] = {"counts": q.counts(), "paused": q.is_paused(),
                                       "limits": q.limits(), "malformed": q.count_malformed()}
                if not out["supervisors"]:
                    out["supervisors"] = _heartbeats(q, prefix_)
        if as_json:
            click.echo(json.dumps(out))
            return
        sups = out["supervisors"]
        click.echo(f"supervisors alive: {', '.join(s['name'] for s in sups) or 'none'}")
        for sup in sups:
            for qi in sup.get("queues", []):
                if qi.get("state") == "failed":
                    click.echo(f"  supervisor {sup['name']}: queue {qi['name']} FAILED: "
                               f"{qi.get('reason', '')}")
                for c in qi.get("children", []):
                    job = f" job {c['job']}" if c.get("job") else ""
                    pid = f" pid {c['pid']}" if c.get("pid") else ""
                    click.echo(f"  supervisor {sup['name']}: {qi['name']} child #{c['slot']}"
                               f"{pid} {c['state']}{job}")
            for task, err in (sup.get("degraded") or {}).items():
                click.echo(f"  supervisor {sup['name']}: task {task} crash-looping: {err}")
        for name, info in out["queues"].items():
            counts = "  ".join(f"{s} {info['counts'].get(s, 0)}" for s in STATES)
            flags = " [paused]" if info["paused"] else ""
            lim = info["limits"]
            if lim["max"]:
                flags += f" [rate {lim['max']}/{lim['duration_s']:g}s]"
            if lim["concurrency"]:
                flags += f" [max active {lim['concurrency']}]"
            if info["malformed"]:
                counts += f"  malformed {info['malformed']}"
            click.echo(f"{name}{flags}: {counts}")

    @main.command()
    @click.argument("queue")
    @target_options
    @click.option("--state", type=click.Choice((*STATES, "malformed")), default="failed",
                  show_default=True)
    @click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def jobs(queue: str, config: Path | None, url: str | None, prefix: str | None,
             state: str, limit: int, as_json: bool) -> None:
        """List jobs of QUEUE in one state (newest finished first); "malformed":
        the ids set aside because their key is no job hash, with why."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            if state == "malformed":
                aside = q.malformed(0, limit - 1)
                if as_json:
                    click.echo(json.dumps([{"id": i, "problems": [why], "set_aside_ms": at}
                                           for i, why, at in aside]))
                    return
                for i, why, _at in aside:
                    click.echo(f"{i}\tset aside: {why}")
                return
            found = q.get_jobs(state, 0, limit - 1)
            if as_json:
                click.echo(json.dumps([job_json(j) for j in found]))
                return
            rows = []
            for j in found:
                info = job_json(j)
                extra = f"{info['error_type']}: {info['failed_reason']}" if info[
                    "failed_reason"] else ""
                if "problems" in info:
                    extra += f"  BROKEN: {'; '.join(info['problems'])}"
                made = info["attempts_made"]
                when = info["finished_on_ms"] or info["processed_on_ms"] or info["timestamp_ms"]
                rows.append((j.id, info["name"] or "?", "?" if made is None else str(made),
                             _when(when).rsplit(".", 1)[0] if when else "-", extra))
            if not rows:
                click.echo(f"no {state} jobs in {queue}")
                return
            heads = ("id", "name", "attempts", "time", "")
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
            for r in (heads, *rows):
                click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                           .rstrip())

    @main.command()
    @click.argument("queue")
    @click.argument("job_id")
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def job(queue: str, job_id: str, config: Path | None, url: str | None,
            prefix: str | None, as_json: bool) -> None:
        """Show one job of QUEUE: its state, data, options, progress, logs,
        result or error, and who held its lease (stall forensics)."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            found = q.get_job(job_id)
            if found is None:
                click.echo(f"rqsup: no job {job_id!r} in queue {queue!r}", err=True)
                sys.exit(1)
            info = {**job_json(found), "state": q.get_job_state(job_id),
                    "logs": q.get_job_logs(job_id, 0, 99)}
            if as_json:
                click.echo(json.dumps(info, default=str))
                return
            show_job(info, found.stacktrace)

    @main.command()
    @click.argument("queue")
    @click.argument("name")
    @click.argument("data", default="null")
    @target_options
    @click.option("--delay", type=float, default=None, help="Seconds before it may run.")
    @click.option("--priority", type=int, default=None)
    @click.option("--attempts", type=click.IntRange(1), default=None)
    @click.option("--job-id", default=None, help="A custom (idempotent) job id.")
    @click.option("--wait", "wait_s", type=float, default=None,
                  help="Wait this many seconds for the result and print it.")
    @click.option("--json", "as_json", is_flag=True,
                  help='Print {"id", "outcome"[, "result"]} as one JSON object.')
    def enqueue(queue: str, name: str, data: str, config: Path | None, url: str | None,
                prefix: str | None, delay: float | None, priority: int | None,
                attempts: int | None, job_id: str | None, wait_s: float | None,
                as_json: bool) -> None:
        """Add a job NAME to QUEUE with DATA (JSON); prints its id."""
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
        opts = {k: v for k, v in {"delay": delay, "priority": priority, "attempts": attempts,
                                  "job_id": job_id}.items() if v is not None}
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            job = q.add(name, payload, **opts)
            if not as_json:
                click.echo(job.id)
            if wait_s is None:
                if as_json:
                    click.echo(json.dumps({"id": job.id, "outcome": job.add_outcome}))
                return
            try:
                if sys.stderr.isatty():
                    _show_progress(q, job.id, job.added_event, wait_s)
                result = job.wait(wait_s)
            except TimeoutError:
                click.echo(f"rqsup: job {job.id} did not finish within {wait_s:g}s "
                           "(--wait); it is still queued or running", err=True)
                sys.exit(1)
            click.echo(json.dumps({"id": job.id, "outcome": job.add_outcome,
                                   "result": result}) if as_json else json.dumps(result))

    def simple(cmd_name: str, doc: str, act: Callable[[Queue], Any]) -> None:
        @main.command(name=cmd_name, help=doc)
        @click.argument("queue")
        @target_options
        @click.option("--json", "as_json", is_flag=True)
        def command(queue: str, config: Path | None, url: str | None,
                    prefix: str | None, as_json: bool) -> None:
            url_, prefix_, _ = _target(config, url, prefix)
            with opened(queue, url_, prefix_) as q:
                result = act(q)
                if as_json:
                    click.echo(json.dumps({"queue": queue, "action": cmd_name,
                                           "count": result}))
                elif result is not None:
                    click.echo(result)

    simple("pause", "Stop every worker of QUEUE from claiming (adds still land).",
           lambda q: q.pause())
    simple("resume", "Let the workers of QUEUE claim again.", lambda q: q.resume())
    simple("promote", "Make every delayed job of QUEUE ready now; prints how many.",
           lambda q: q.promote_jobs())

    @main.command()
    @click.argument("queue")
    @target_options
    @click.option("--grace", default="1h", show_default=True,
                  help="Only jobs finished longer ago than this (e.g. 30m, 2d).")
    @click.option("--state", type=click.Choice(("completed", "failed", "wait", "delayed",
                                                "prioritized")), default="completed",
                  show_default=True)
    @click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def clean(queue: str, config: Path | None, url: str | None, prefix: str | None,
              grace: str, state: str, limit: int, as_json: bool) -> None:
        """Delete old jobs of QUEUE in one state; prints how many."""
        from rqsup.config.units import parse_duration

        try:
            grace_s = parse_duration(grace)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--grace") from None
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            total = q.counts().get(state, 0)
            done = 0
            with _bar(f"cleaning {state} jobs of {queue}", min(total, limit)) as advance:
                while done < limit:  # in steps, so a bar can move and Redis breathes
                    step = len(q.clean(grace_s, min(1000, limit - done), state))
                    done += step
                    advance(step)
                    if step < min(1000, limit - done + step):
                        break
            click.echo(json.dumps({"queue": queue, "action": "clean", "state": state,
                                   "count": done}) if as_json else done)


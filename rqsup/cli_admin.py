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
    from rqsup.queue.queue import Job, Queue

STATES = ("wait", "prioritized", "delayed", "active", "completed", "failed", "waiting-children")


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config / --url / --prefix: where the queues live."""
    fn = click.option("--prefix", default=None, help="Key prefix (default rqsup).")(fn)
    fn = click.option("--url", default=None, help="Redis URL (default: the config's, or "
                                                  "redis://127.0.0.1:6379/0).")(fn)
    return click.option(
        "--config", "config", default=None,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A supervisor config: its [redis] url and prefix, and its queues.",
    )(fn)


def _target(config: Path | None, url: str | None, prefix: str | None
            ) -> tuple[str, str, list[str]]:
    queues: list[str] = []
    if config is not None:
        from rqsup.cli import _load

        cfg = _load(config)
        url = url or cfg.redis.url
        prefix = prefix or cfg.redis.prefix
        queues = [q.name for q in cfg.queues]
    return url or "redis://127.0.0.1:6379/0", prefix or "rqsup", queues


@contextmanager
def opened(name: str, url: str, prefix: str) -> Iterator[Queue]:
    """A Queue; library errors become one clear line and exit status 1."""
    from rqsup.errors import RqsupError
    from rqsup.queue.connection import CONNECTION_ERRORS
    from rqsup.queue.queue import Queue

    try:
        q = Queue(name, url, prefix=prefix)
    except ValueError as exc:  # a bad queue name or prefix
        raise click.BadParameter(str(exc), param_hint="QUEUE") from None
    try:
        yield q
    except RqsupError as exc:
        click.echo(f"rqsup: {exc}", err=True)
        sys.exit(1)
    except CONNECTION_ERRORS as exc:
        click.echo(f"rqsup: Redis at {_redact(url)} unreachable: {exc}", err=True)
        sys.exit(1)
    finally:
        q.close()


def _redact(url: str) -> str:
    from rqsup.config import redact_url

    return redact_url(url)


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "name": job.name, "data": job.data, "attempts_made": job.attempts_made,
        "progress": job.progress, "return_value": job.return_value,
        "failed_reason": job.failed_reason, "error_type": job.error_type,
        "timestamp_ms": job.timestamp_ms, "processed_on_ms": job.processed_on_ms,
        "finished_on_ms": job.finished_on_ms, "worker": job.worker,
    }


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
                                       "limits": q.limits()}
                if not out["supervisors"]:
                    keys = q.client.scan_iter(match=f"{prefix_}:supervisor:*", count=100)
                    out["supervisors"] = sorted(
                        k.decode().rsplit(":", 1)[1] for k in keys)
        if as_json:
            click.echo(json.dumps(out))
            return
        click.echo(f"supervisors alive: {', '.join(out['supervisors']) or 'none'}")
        for name, info in out["queues"].items():
            counts = "  ".join(f"{s} {info['counts'].get(s, 0)}" for s in STATES)
            flags = " [paused]" if info["paused"] else ""
            lim = info["limits"]
            if lim["max"]:
                flags += f" [rate {lim['max']}/{lim['duration_s']:g}s]"
            if lim["concurrency"]:
                flags += f" [max active {lim['concurrency']}]"
            click.echo(f"{name}{flags}: {counts}")

    @main.command()
    @click.argument("queue")
    @target_options
    @click.option("--state", type=click.Choice(STATES), default="failed", show_default=True)
    @click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def jobs(queue: str, config: Path | None, url: str | None, prefix: str | None,
             state: str, limit: int, as_json: bool) -> None:
        """List jobs of QUEUE in one state (newest finished first)."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            found = q.get_jobs(state, 0, limit - 1)
            if as_json:
                click.echo(json.dumps([job_json(j) for j in found]))
                return
            for j in found:
                extra = f"  {j.error_type}: {j.failed_reason}" if j.failed_reason else ""
                click.echo(f"{j.id}\t{j.name}\tattempts {j.attempts_made}{extra}")

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
    def enqueue(queue: str, name: str, data: str, config: Path | None, url: str | None,
                prefix: str | None, delay: float | None, priority: int | None,
                attempts: int | None, job_id: str | None, wait_s: float | None) -> None:
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
            click.echo(job.id)
            if wait_s is not None:
                click.echo(json.dumps(job.wait(wait_s)))

    def simple(cmd_name: str, doc: str, act: Callable[[Queue], Any]) -> None:
        @main.command(name=cmd_name, help=doc)
        @click.argument("queue")
        @target_options
        def command(queue: str, config: Path | None, url: str | None,
                    prefix: str | None) -> None:
            url_, prefix_, _ = _target(config, url, prefix)
            with opened(queue, url_, prefix_) as q:
                result = act(q)
                if result is not None:
                    click.echo(result)

    simple("pause", "Stop every worker of QUEUE from claiming (adds still land).",
           lambda q: q.pause())
    simple("resume", "Let the workers of QUEUE claim again.", lambda q: q.resume())
    simple("retry", "Move every failed job of QUEUE back to wait; prints how many.",
           lambda q: q.retry_jobs("failed"))
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
    def clean(queue: str, config: Path | None, url: str | None, prefix: str | None,
              grace: str, state: str, limit: int) -> None:
        """Delete old jobs of QUEUE in one state; prints how many."""
        from rqsup.units import parse_duration

        try:
            grace_s = parse_duration(grace)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--grace") from None
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            click.echo(len(q.clean(grace_s, limit, state)))

    @main.command()
    @click.argument("queue")
    @target_options
    @click.option("--count", type=click.IntRange(1), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def events(queue: str, config: Path | None, url: str | None, prefix: str | None,
               count: int, as_json: bool) -> None:
        """The last events of QUEUE, oldest first."""
        from rqsup.queue.events import parse_entries

        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            newest: Any = q.client.xrevrange(q.core.keys.events, count=count)
            entries = list(reversed(newest or []))
            for ev in parse_entries(entries):
                if as_json:
                    click.echo(json.dumps({"id": ev.stream_id, "event": ev.name,
                                           "job_id": ev.job_id, "fields": ev.fields}))
                else:
                    rest = " ".join(f"{k}={v}" for k, v in ev.fields.items()
                                    if k not in ("event", "id"))
                    click.echo(f"{ev.stream_id} {ev.name} {ev.job_id or ''} {rest}".rstrip())

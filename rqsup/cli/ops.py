"""The operator's commands that act on one job or a whole queue, and follow
events: ``queues``, ``events [--follow]``, ``retry``/``remove``/``cancel``
(of one job, or ``retry`` of every failed one), ``drain``, ``obliterate``
(both ask first; ``--yes`` skips the question), and ``worker`` (a supervisor
without a config file)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from rqsup.cli.admin import _target, opened, target_options


def _human_time(stream_id: str) -> str:
    ms = int(stream_id.partition("-")[0])
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _event_line(ev: Any) -> str:
    rest = " ".join(f"{k}={v}" for k, v in ev.fields.items() if k not in ("event", "id"))
    job = f" job {ev.job_id}" if ev.job_id else ""
    return f"{_human_time(ev.stream_id)}  {ev.name}{job} {rest}".rstrip()


def _event_json(ev: Any) -> str:
    return json.dumps({"id": ev.stream_id, "event": ev.name, "job_id": ev.job_id,
                       "fields": ev.fields}, default=str)


def _result(action: str, queue: str, count: int, as_json: bool,
            job_id: str | None = None) -> str:
    """An action's result: the count for people, a typed JSON object for scripts."""
    if not as_json:
        return str(count)
    out: dict[str, Any] = {"queue": queue, "action": action, "count": count}
    if job_id is not None:
        out["job_id"] = job_id
    return json.dumps(out)


def register(main: click.Group) -> None:
    @main.command()
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def queues(config: Path | None, url: str | None, prefix: str | None,
               as_json: bool) -> None:
        """Every queue under the prefix (found in Redis), with its counts."""
        from rqsup.queue.roster import discover_queues

        url_, prefix_, configured = _target(config, url, prefix)
        with opened("_", url_, prefix_) as probe:
            names = sorted(set(discover_queues(probe.client, prefix_)) | set(configured))
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            with opened(name, url_, prefix_) as q:
                out[name] = {"counts": q.counts(), "paused": q.is_paused()}
        if as_json:
            click.echo(json.dumps(out))
            return
        if not out:
            click.echo(f"no queues under prefix {prefix_!r}")
            return
        states = ("wait", "prioritized", "delayed", "active", "completed", "failed")
        width = max(len(n) for n in out)
        click.echo(f"{'queue':<{width}}  " + "  ".join(f"{s:>11}" for s in states))
        for name, info in out.items():
            flag = "  (paused)" if info["paused"] else ""
            click.echo(f"{name:<{width}}  " + "  ".join(
                f"{info['counts'].get(s, 0):>11}" for s in states) + flag)

    @main.command()
    @click.argument("queue")
    @target_options
    @click.option("--count", type=click.IntRange(1), default=20, show_default=True,
                  help="How many of the latest events to show first.")
    @click.option("--follow", "-f", is_flag=True, help="Then print new events as they come "
                  "(Ctrl-C stops).")
    @click.option("--json", "as_json", is_flag=True)
    def events(queue: str, config: Path | None, url: str | None, prefix: str | None,
               count: int, follow: bool, as_json: bool) -> None:
        """The last events of QUEUE, oldest first, in local time; --follow for more."""
        from rqsup.queue.events import parse_entries

        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            key = q.core.keys.events
            newest: Any = q.client.xrevrange(key, count=count)
            entries = list(reversed(newest or []))
            last = entries[-1][0] if entries else "$"
            show = _event_json if as_json else _event_line
            for ev in parse_entries(entries, decode=True):
                click.echo(show(ev))
            if not follow:
                return
            try:
                while True:
                    reply: Any = q.client.xread({key: last}, count=500, block=1000)
                    for _key, got in reply or []:
                        for ev in parse_entries(got, decode=True):
                            click.echo(show(ev))
                        last = got[-1][0]
            except KeyboardInterrupt:
                return

    @main.command()
    @click.argument("queue")
    @click.argument("job_id", required=False)
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def retry(queue: str, job_id: str | None, config: Path | None, url: str | None,
              prefix: str | None, as_json: bool) -> None:
        """Retry one failed job of QUEUE (JOB_ID), or every failed job (with a
        fresh set of attempts); prints how many."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            if job_id is None:
                from rqsup.cli.admin import _bar

                total, done = q.counts()["failed"], 0
                with _bar(f"retrying the failed jobs of {queue}", total) as advance:
                    while True:  # in steps, so a bar can move
                        step = q.retry_jobs("failed", count=1000, reset_attempts_made=True)
                        done += step
                        advance(step)
                        if step < 1000:
                            break
                click.echo(_result("retry", queue, done, as_json))
                return
            job = q.get_job(job_id)
            if job is None:
                click.echo(f"rqsup: no job {job_id!r} in queue {queue!r}", err=True)
                sys.exit(1)
            job.retry(job.state() if job.state() == "completed" else "failed",
                      reset_attempts_made=True)
            click.echo(_result("retry", queue, 1, as_json, job_id))

    @main.command()
    @click.argument("queue")
    @click.argument("job_id")
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def remove(queue: str, job_id: str, config: Path | None, url: str | None,
               prefix: str | None, as_json: bool) -> None:
        """Remove one job of QUEUE that is not running (and its pending children)."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            q.remove(job_id)
            click.echo(_result("remove", queue, 1, as_json, job_id) if as_json
                       else f"removed job {job_id}")

    @main.command()
    @click.argument("queue")
    @click.argument("job_id")
    @click.option("--reason", default=None, help="Why (the job's failed reason).")
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def cancel(queue: str, job_id: str, reason: str | None, config: Path | None,
               url: str | None, prefix: str | None, as_json: bool) -> None:
        """Cancel one job of QUEUE: a running one is stopped by its worker, one
        that waits fails at once (JobCancelled)."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            outcome = q.cancel(job_id, reason)
            if as_json:
                click.echo(json.dumps({"queue": queue, "action": "cancel", "job_id": job_id,
                                       "outcome": outcome}))
                return
            told = "its worker was told" if outcome == "signalled" else "failed (not running)"
            click.echo(f"job {job_id}: {told}")

    @main.command()
    @click.argument("queue")
    @click.option("--delayed", is_flag=True, help="Delayed jobs too.")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask.")
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def drain(queue: str, delayed: bool, yes: bool, config: Path | None, url: str | None,
              prefix: str | None, as_json: bool) -> None:
        """Delete the waiting (and prioritized; with --delayed also delayed) jobs of QUEUE."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            counts = q.counts()
            n = counts["wait"] + counts["prioritized"] + (counts["delayed"] if delayed else 0)
            if not yes:
                click.confirm(f"Delete {n} job(s) of queue {queue!r}?", abort=True)
            click.echo(_result("drain", queue, q.drain(delayed), as_json))

    @main.command()
    @click.argument("queue")
    @click.option("--force", is_flag=True, help="Even while jobs are active.")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask.")
    @target_options
    @click.option("--json", "as_json", is_flag=True)
    def obliterate(queue: str, force: bool, yes: bool, config: Path | None, url: str | None,
                   prefix: str | None, as_json: bool) -> None:
        """Delete QUEUE: every job, its schedulers, events and settings."""
        url_, prefix_, _ = _target(config, url, prefix)
        with opened(queue, url_, prefix_) as q:
            total = sum(q.counts().values())
            if not yes:
                click.confirm(f"Delete queue {queue!r} and all its {total} job(s)? This cannot "
                              "be undone", abort=True)
            q.obliterate(force)
            click.echo(_result("obliterate", queue, total, as_json) if as_json
                       else f"obliterated queue {queue}")


def register_worker(main: click.Group) -> None:
    @main.command()
    @click.argument("processor")
    @click.option("--queue", "-q", "queue", required=True, help="The queue to serve.")
    @click.option("--mode", type=click.Choice(("process", "thread", "async")),
                  default="process", show_default=True)
    @click.option("--concurrency", "-c", type=click.IntRange(1), default=1, show_default=True)
    @click.option("--name", default=None, help="Supervisor name (default: <host>-<queue>).")
    @click.option("--metrics", "listen", default=None,
                  help='Serve Prometheus metrics on host:port, e.g. "127.0.0.1:9464".')
    @click.option("--url", default=None, envvar="RQSUP_URL",
                  help="Redis URL (default: $RQSUP_URL or redis://127.0.0.1:6379/0).")
    @click.option("--prefix", default=None, envvar="RQSUP_PREFIX",
                  help="Key prefix (default: $RQSUP_PREFIX or rqsup).")
    def worker(processor: str, queue: str, mode: str, concurrency: int, name: str | None,
               listen: str | None, url: str | None, prefix: str | None) -> None:
        """Serve QUEUE with PROCESSOR ("module:function", imported from the
        current folder) under a supervisor, without a config file: the same
        signals, logging, leases and sandbox defaults as `rqsup start`."""
        import importlib
        import socket

        from rqsup.config.model import parse_config
        from rqsup.errors import ConfigError

        raw: dict[str, Any] = {
            "redis": {"url": url or "redis://127.0.0.1:6379/0", "prefix": prefix or "rqsup"},
            "supervisor": {"name": name or f"{socket.gethostname()}-{queue}"},
            "queues": [{"name": queue, "processor": processor, "mode": mode,
                        "concurrency": concurrency}],
        }
        if listen is not None:
            raw["metrics"] = {"listen": listen}
        try:
            # The current folder stands for a config file's: processors import from it.
            cfg = parse_config(raw, Path.cwd() / "rqsup-worker")
        except ConfigError as exc:
            click.echo(str(exc).replace(str(Path.cwd() / "rqsup-worker"), "rqsup worker"),
                       err=True)
            sys.exit(2)
        from rqsup.cli.check import add_processor_path

        add_processor_path(cfg.supervisor.processor_path)
        app = importlib.import_module("rqsup.supervisor.app")
        sys.exit(app.run_supervisor(cfg))

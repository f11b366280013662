"""The ``rqsup`` command: a thin layer over the library.

Only click is imported at the top, so ``rqsup --help`` stays fast; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rqsup.config.model import Config

#: Exit codes shared by the commands.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_CONFIG = 2

CONFIG_ARG = click.argument(
    "config", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rqsup")
def main() -> None:
    """rqsup: a Redis job queue with a supervisor for CPU-heavy jobs."""


def _load(path: Path, as_json: bool = False) -> Config:
    """Load a config or exit 2 with every problem, each naming the file and key."""
    from rqsup.config.model import load_config
    from rqsup.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"config": str(path), "ok": False, "problems": exc.problems}))
        else:
            click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_CONFIG)


@main.command()
@CONFIG_ARG
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def check(config: Path, as_json: bool) -> None:
    """Check CONFIG, each queue's processor and the Redis server, before start.

    Exit 0 when every check passes, 1 when one fails, 2 when CONFIG is invalid.
    """
    cfg = _load(config, as_json)
    from rqsup.cli.check import OK, CheckResult, run_checks

    results = [CheckResult(f"config {config}", OK, f"{len(cfg.queues)} queue(s), "
                                                   f"supervisor {cfg.supervisor.name}")]
    results += run_checks(cfg)
    passed = all(r.passed for r in results)
    if as_json:
        out: dict[str, Any] = {"config": str(config), "ok": passed,
                               "checks": [r.to_json() for r in results]}
        click.echo(json.dumps(out))
    else:
        for result in results:
            click.echo(result.line())
    sys.exit(EXIT_OK if passed else EXIT_CHECK_FAILED)


@main.command()
@CONFIG_ARG
def start(config: Path) -> None:
    """Run the supervisor for CONFIG until SIGTERM (the systemd entry point)."""
    cfg = _load(config)
    # Processors load from [supervisor].processor_path (the config file's
    # folder by default), after the installed packages, as under `rqsup check`.
    from rqsup.cli.check import add_processor_path

    add_processor_path(cfg.supervisor.processor_path)
    # Imported here and by name: `rqsup --help` never pays for the supervisor.
    app = importlib.import_module("rqsup.supervisor.app")
    sys.exit(app.run_supervisor(cfg))


@main.command()
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Redis, prefix and queues from this config file.")
@click.option("--url", help="Redis URL (default: the config's, or redis://127.0.0.1:6379/0).")
@click.option("--prefix", help="Key prefix (default: the config's, or rqsup).")
@click.option("--listen", help='host:port to serve /metrics on (default: the config\'s '
              '[metrics] listen, or "127.0.0.1:9464").')
def metrics(config: Path | None, url: str | None, prefix: str | None,
            listen: str | None) -> None:
    """Serve the queue gauges of every queue under the prefix on /metrics.

    One scrape target for the queues (set [metrics] queue_gauges = false on
    the supervisors, so each queue is not exported once per supervisor).
    Runs until SIGTERM or Ctrl-C.
    """
    import signal
    import threading

    from rqsup.cli.admin import _target
    from rqsup.config.units import parse_listen

    url_, prefix_, queues = _target(config, url, prefix)
    if listen is None and config is not None:
        listen = _load(config).metrics.listen
    listen = listen or "127.0.0.1:9464"
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    from rqsup.observe.server import Exporter

    exporter = Exporter(listen, url=url_, prefix=prefix_, queues=lambda: queues,
                        discover=True, job_metrics=False)
    try:
        exporter.start()
    except OSError as exc:
        click.echo(f"rqsup metrics: cannot listen on {listen}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    click.echo(f"rqsup metrics: serving the queues under {prefix_!r} on "
               f"http://{exporter.host}:{exporter.port}/metrics", err=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    exporter.stop()


from rqsup.cli.admin import register as _register_admin  # noqa: E402  (click only)
from rqsup.cli.dash import register as _register_dashboard  # noqa: E402
from rqsup.cli.ops import register as _register_ops  # noqa: E402  (click only)
from rqsup.cli.ops import register_worker as _register_worker  # noqa: E402

_register_admin(main)
_register_ops(main)
_register_worker(main)
_register_dashboard(main)


if __name__ == "__main__":
    main()

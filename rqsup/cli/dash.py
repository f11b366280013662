"""``rqsup dashboard``: serve the web dashboard (uvicorn), and
``rqsup dashboard hash-password`` for the config's users."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import click

from rqsup.cli.admin import _REDIS_OPTIONS, _target


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(main: click.Group) -> None:
    @main.group(invoke_without_command=True)
    @click.option("--config", "config", type=click.Path(exists=True, dir_okay=False,
                  path_type=Path), help="Redis, prefix and [dashboard] from this config.")
    @click.option("--url", default=None, envvar="RQSUP_URL", help="Redis URL.")
    @click.option("--prefix", default=None, envvar="RQSUP_PREFIX", help="Key prefix.")
    @click.option("--listen", default=None, help='host:port (default: the config\'s, or '
                  '"127.0.0.1:8465").')
    @click.option("--read-only", is_flag=True, help="Refuse every action (on the server).")
    @click.pass_context
    def dashboard(ctx: click.Context, config: Path | None, url: str | None,
                  prefix: str | None, listen: str | None, read_only: bool) -> None:
        """Serve the web dashboard: queues, jobs, actions, with login and roles."""
        if ctx.invoked_subcommand is not None:
            return
        try:
            import uvicorn

            from rqsup.dashboard import create_app
            from rqsup.dashboard.auth import User
        except ImportError as exc:
            click.echo(f"rqsup dashboard needs the dashboard extra (pip install "
                       f"'rqsup[dashboard]'): {exc}", err=True)
            sys.exit(1)
        from rqsup.config.dashboard import DashboardConfig
        from rqsup.config.units import parse_listen

        url_, prefix_, _ = _target(config, url, prefix)
        dc = DashboardConfig()
        if config is not None:
            from rqsup.cli.main import _load

            dc = _load(config).dashboard
        listen = listen or dc.listen
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen") from None
        users = [User(u.name, u.password_hash, u.role) for u in dc.users]
        if not users and not _loopback(host):
            click.echo(f"rqsup dashboard: refusing to listen on {listen} without login: add "
                       "[[dashboard.users]] to the config (rqsup dashboard hash-password "
                       "makes a hash), or listen on 127.0.0.1", err=True)
            sys.exit(2)
        from rqsup.queue.connection import async_client

        app = create_app(client=async_client(url_, **_REDIS_OPTIONS), prefix=prefix_,
                         users=users, read_only=read_only or dc.read_only, secret=dc.secret,
                         mask={q: list(keys) for q, keys in dc.mask.items()})
        click.echo(f"rqsup dashboard on http://{host}:{port}/ (prefix {prefix_!r})", err=True)
        # Open live streams never end by themselves: do not wait long for them.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)

    @dashboard.command("hash-password")
    @click.password_option(prompt="Password", confirmation_prompt=True)
    def hash_password(password: str) -> None:
        """Print the scrypt hash of a password, for [[dashboard.users]] password_hash."""
        from rqsup.dashboard.auth import hash_password as make

        try:
            click.echo(make(password))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="password") from None

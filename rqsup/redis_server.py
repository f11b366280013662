"""Start and stop a private ``redis-server``.

Used by the test suite (every test run gets its own server, never the shared
one), by the benchmarks, and by the dev quickstart when no Redis is reachable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


class RedisServerError(RuntimeError):
    """The private redis-server could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One private redis-server with its data in ``data_dir``.

    ``unix_socket=True`` listens on a socket in a short temp path (socket paths
    are limited to 107 bytes); otherwise on a free loopback port. Data is kept
    in an append-only file fsynced on every write, so ``kill()`` followed by
    ``start()`` loses nothing: exactly what the crash tests need.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        unix_socket: bool = True,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RedisServerError(
                "redis-server is not installed: install it (apt-get install redis-server) "
                "or point the config at a reachable Redis"
            )
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rqsup-redis-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._sock_dir: str | None = None
        self.socket_path: str | None = None
        if unix_socket:
            self._sock_dir = tempfile.mkdtemp(prefix="rqsup-", dir="/tmp")
            self.socket_path = os.path.join(self._sock_dir, "redis.sock")
            self.port = 0
        else:
            self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        assert self.binary is not None
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--maxmemory-policy", "noeviction",
        ]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args + list(self.extra_args)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if self.is_running():
            return self
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    detail = err.decode(errors="replace") or self._log_tail()
                    raise RedisServerError(f"redis-server exited at start: {detail}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisServerError(
                        f"redis-server did not answer within {timeout_s}s: {self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text()[-2000:]
        except OSError:
            return ""

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, as far as clients can tell."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

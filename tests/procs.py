"""Driving real ``rqsup start`` processes from tests: configs, the process,
its log, its children; fixtures ``start`` and ``queues`` live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

import rqsup
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
RQSUP = str(Path(sys.executable).parent / "rqsup")
PROCS = "tests.fixtures.supervisor_procs"


# -- helpers -------------------------------------------------------------------------


def uid() -> str:
    return uuid.uuid4().hex[:8]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(url: str, name: str, queues: list[dict[str, Any]], **supervisor: Any) -> str:
    sup = {"name": name, "lease": "10s", "renew_interval": "1s", "stall_interval": "30s",
           "status_interval": "1s", "shutdown_grace": "10s", "block_timeout": "1s",
           **supervisor}
    lines = ["[redis]", f"url = {toml_value(url)}", "", "[supervisor]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in sup.items()]
    for q in queues:
        lines += ["", "[[queues]]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in q.items()]
    return "\n".join(lines) + "\n"


def title(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(p.cmdline()).strip()
    return ""


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def queue_states(q: rqsup.Queue) -> dict[str, int]:
    return {k: v for k, v in q.counts().items() if v}


class Supervisor:
    """One ``rqsup start`` process; stderr goes to a file (read by :meth:`log`)."""

    def __init__(self, cfg: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONPATH": str(REPO)}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            full_env.pop(var, None)
        full_env.update(env or {})
        #: Where this process's part of the (shared, appended) log file begins.
        self.log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as err:
            self.proc = subprocess.Popen([RQSUP, "start", str(cfg)], cwd=REPO, env=full_env,
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.ps = psutil.Process(self.proc.pid)
        #: Every descendant ever seen (forkserver, children): killed at cleanup.
        self.seen: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """What this supervisor wrote to stderr so far."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def wait_log(self, pattern: str, what: str | None = None, timeout: float = 15.0,
                 count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) occurs ``count`` times in the log."""
        def found() -> bool:
            self.check_running(pattern)
            return len(re.findall(pattern, self.log())) >= count

        wait_until(found, f"{what or pattern!r} in the supervisor log", timeout)
        return self.log()

    def check_running(self, waiting_for: str = "") -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"supervisor exited with {code} while waiting for "
                                 f"{waiting_for!r}; its log:\n{self.log()}")

    def descendants(self) -> list[psutil.Process]:
        try:
            found = self.ps.children(recursive=True)
        except psutil.Error:
            return []
        for p in found:
            self.seen.setdefault(p.pid, p)
        return found

    def children(self, queue: str) -> list[tuple[str, psutil.Process]]:
        """Live children of ``queue`` (title "rqsup: child <queue>#<slot> ..."), by slot."""
        out = []
        for p in self.descendants():
            t = title(p)
            if t.startswith(f"rqsup: child {queue}#") and alive(p):
                out.append((t, p))
        return sorted(out, key=lambda tp: tp[0])

    def wait_children(self, queue: str, n: int,
                      timeout: float = 15.0) -> list[tuple[str, psutil.Process]]:
        """Wait until ``queue`` has exactly ``n`` live children."""
        found: list[tuple[str, psutil.Process]] = []

        def exactly() -> bool:
            nonlocal found
            found = self.children(queue)
            return len(found) == n

        wait_until(exactly, f"{n} children of queue {queue} (have {found})", timeout)
        return found

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s; its log:\n"
                                 f"{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the supervisor and everything it started (cleanup)."""
        self.descendants()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """``start(cfg, env=None)``: a supervisor; all are killed (with their children)
    when the test ends, and the log of a failed test is easy to find in tmp_path."""
    started: list[Supervisor] = []

    def go(cfg: Path, env: dict[str, str] | None = None) -> Supervisor:
        sup = Supervisor(cfg, tmp_path / "supervisor.log", env)
        started.append(sup)
        return sup

    yield go
    for sup in started:
        sup.kill()


@pytest.fixture
def queues(redis_url: str) -> Iterator[Callable[[str], rqsup.Queue]]:
    opened: list[rqsup.Queue] = []

    def make(name: str) -> rqsup.Queue:
        q = rqsup.Queue(name, redis_url)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def started_ids(startlog: Path) -> list[str]:
    if not startlog.exists():
        return []
    return [line.split()[0] for line in startlog.read_text().splitlines() if line.strip()]


def log_time(line: str) -> float:
    """The timestamp of a text log line, in seconds."""
    stamp = line[:23]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class NotifySocket:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rqsup-notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def next(self, pred: Callable[[dict[str, str]], bool], what: str,
             timeout: float = 15.0) -> dict[str, str]:
        """Receive until a message matching ``pred`` arrives; every message is kept."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                raw = self.sock.recv(65536)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if pred(msg):
                return msg

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)

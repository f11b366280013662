"""sd_notify messages, checked against a real datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rqsup.sdnotify import NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC, Notifier

RECEIVE_TIMEOUT_S = 5.0


@dataclass
class FakeSystemd:
    """A bound SOCK_DGRAM socket and the NOTIFY_SOCKET value that names it."""

    sock: socket.socket
    env_value: str

    def receive(self) -> list[str]:
        """The next datagram as its assignments; fails after a deadline, never hangs."""
        self.sock.settimeout(RECEIVE_TIMEOUT_S)
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        env_value = path
    else:
        name = f"rqsup-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        env_value = "@" + name
    try:
        yield FakeSystemd(sock, env_value)
    finally:
        sock.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_lifecycle_messages_arrive_exactly(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch
) -> None:
    # Given systemd's environment for a Type=notify service with a 30 s watchdog
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    clean_env.setenv(WATCHDOG_USEC, "30000000")
    clean_env.setenv(WATCHDOG_PID, str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.watchdog_interval_s == 15.0
    pid = os.getpid()

    # When the supervisor goes through start, work, reload and stop
    notifier.ready(status="starting: 0 running")
    notifier.status("running 3, waiting 12\nlag 1ms")
    notifier.watchdog()
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.stopping()
    notifier.close()

    # Then systemd receives one datagram per call, in order, with exactly these assignments
    assert systemd.receive() == ["READY=1", f"MAINPID={pid}", "STATUS=starting: 0 running"]
    assert systemd.receive() == ["STATUS=running 3, waiting 12 lag 1ms"]
    assert systemd.receive() == ["WATCHDOG=1"]
    reloading = systemd.receive()
    assert reloading[0] == "RELOADING=1" and len(reloading) == 2
    key, value = reloading[1].split("=")
    assert key == "MONOTONIC_USEC" and before_us <= int(value) <= after_us
    assert systemd.receive() == ["STOPPING=1"]
    assert systemd.nothing_pending()


def test_optional_status_on_reloading_and_stopping(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    notifier = Notifier.from_env()
    notifier.ready()
    notifier.reloading(status="reloading config")
    notifier.stopping(status="draining 2 jobs")
    assert systemd.receive() == ["READY=1", f"MAINPID={os.getpid()}"]
    assert systemd.receive()[-1] == "STATUS=reloading config"
    assert systemd.receive() == ["STOPPING=1", "STATUS=draining 2 jobs"]


def test_without_notify_socket_every_method_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    # Given a supervisor started outside systemd (a watchdog variable alone means nothing)
    clean_env.setenv(WATCHDOG_USEC, "30000000")
    notifier = Notifier.from_env()

    # Then nothing is enabled and nothing is sent or raised
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready(status="x")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    notifier.close()
    assert notifier._sock is None


def test_a_vanished_socket_is_logged_once_and_never_raised(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given systemd's socket, which then disappears (systemd re-executed, file removed)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    clean_env.setenv(NOTIFY_SOCKET, str(path))
    notifier = Notifier.from_env()
    notifier.status("up")
    sock.settimeout(RECEIVE_TIMEOUT_S)
    assert sock.recv(4096) == b"STATUS=up"
    sock.close()
    path.unlink()

    # When the supervisor keeps notifying
    with caplog.at_level(logging.DEBUG, logger="rqsup.sdnotify"):
        notifier.status("still up")
        notifier.ready()
        notifier.stopping()

    # Then nothing is raised and the failure is warned about once
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()

    # And once the socket is back, the next send reaches it on a fresh socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        notifier.status("back")
        sock.settimeout(RECEIVE_TIMEOUT_S)
        assert sock.recv(4096) == b"STATUS=back"
    finally:
        sock.close()
        notifier.close()


def test_watchdog_for_another_pid_does_not_apply(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch
) -> None:
    # Given a watchdog meant for a different process (e.g. a wrapper that exec'd nothing)
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    clean_env.setenv(WATCHDOG_USEC, "30000000")
    clean_env.setenv(WATCHDOG_PID, str(os.getpid() + 1))
    notifier = Notifier.from_env()

    # Then there is no watchdog interval and watchdog() sends nothing
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.status("marker")
    assert systemd.receive() == ["STATUS=marker"]


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_an_unusable_watchdog_usec_means_no_watchdog(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch, usec: str
) -> None:
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    clean_env.setenv(WATCHDOG_USEC, usec)
    assert Notifier.from_env().watchdog_interval_s is None


def test_from_env_removes_the_variables_so_children_do_not_inherit_them(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    clean_env.setenv(WATCHDOG_USEC, "10000000")
    clean_env.setenv(WATCHDOG_PID, str(os.getpid()))

    notifier = Notifier.from_env()

    assert not {NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID} & set(os.environ)
    assert notifier.enabled and notifier.watchdog_interval_s == 5.0


def test_from_env_can_leave_the_environment_alone(
    systemd: FakeSystemd, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(NOTIFY_SOCKET, systemd.env_value)
    Notifier.from_env(unset=False)
    assert os.environ[NOTIFY_SOCKET] == systemd.env_value


def test_a_non_unix_address_disables_notification(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(NOTIFY_SOCKET, "vsock:2:1234")
    notifier = Notifier.from_env()
    assert not notifier.enabled
    notifier.ready()

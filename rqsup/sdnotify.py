"""The systemd notification protocol (sd_notify(3)), without libsystemd.

The supervisor runs as ``Type=notify`` with a watchdog: it tells systemd when
it is ready, what it is doing, that it is still healthy, and when it reloads
or stops. Each message is one AF_UNIX datagram of newline-separated
``KEY=value`` assignments sent to ``$NOTIFY_SOCKET``.

Notifications are advisory for the supervisor's own work: a send that fails
(systemd restarted, socket gone) is logged and swallowed, never raised, so
losing systemd's socket can never take the job runner down with it. The first
failure of an outage is a warning, the rest are debug lines until a send works
again; the socket is reopened on the next send.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger("rqsup.sdnotify")

#: Environment variables of the protocol. All three are removed from
#: ``os.environ`` by ``from_env(unset=True)`` so child processes, which must
#: never speak for the supervisor, do not inherit them.
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"

#: Upper bound on one send. systemd's receive queue is large, so a send does
#: not block in practice; the bound keeps a wedged PID 1 from stalling the
#: supervisor's event loop for more than a moment.
SEND_TIMEOUT_S = 0.25


def socket_address(value: str) -> str | bytes | None:
    """Map a ``NOTIFY_SOCKET`` value to a socket address, or None if unusable.

    ``/path`` is a filesystem socket; ``@name`` is an abstract socket whose
    name starts with a NUL byte. Other forms (``vsock:``) are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares RELOADING=1 against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # An assignment ends at a newline; a multi-line status would inject keys.
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages to systemd; every method is a no-op without a socket.

    ``notify_socket`` uses the ``NOTIFY_SOCKET`` syntax (``/path`` or
    ``@abstract``). ``watchdog_usec`` is systemd's watchdog timeout; None
    means no watchdog, and ``watchdog()`` then sends nothing.
    """

    def __init__(
        self, notify_socket: str | None = None, *, watchdog_usec: int | None = None
    ) -> None:
        self._address = socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying systemd",
                        notify_socket)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_env(cls, *, unset: bool = True) -> Notifier:
        """Build a notifier from the environment systemd gave this process.

        The watchdog applies only when ``WATCHDOG_PID`` is absent or is this
        process. With ``unset`` (the default, like sd_notify's
        ``unset_environment``) the variables are removed from ``os.environ``
        so children cannot inherit them.
        """
        notify_socket = os.environ.get(NOTIFY_SOCKET) or None
        watchdog_usec = _positive_int(os.environ.get(WATCHDOG_USEC))
        watchdog_pid = os.environ.get(WATCHDOG_PID)
        if watchdog_pid is not None and _positive_int(watchdog_pid) != os.getpid():
            watchdog_usec = None
        if unset:
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                os.environ.pop(name, None)
        return cls(notify_socket, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (running under systemd)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call ``watchdog()``: half the timeout, or None without a watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete: READY=1 with MAINPID and an optional STATUS."""
        self._send(["READY=1", f"MAINPID={os.getpid()}"], status)

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``."""
        self._send([], text)

    def watchdog(self) -> None:
        """Tell systemd the supervisor is healthy; sent only when a watchdog applies."""
        if self._watchdog_usec is not None:
            self._send(["WATCHDOG=1"])

    def reloading(self, status: str | None = None) -> None:
        """A reload started; ``ready()`` ends it. MONOTONIC_USEC is what notify-reload needs."""
        self._send(["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"], status)

    def stopping(self, status: str | None = None) -> None:
        """Shutdown started: systemd shows 'deactivating' while jobs drain."""
        self._send(["STOPPING=1"], status)

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            self._close_locked()

    def _send(self, assignments: list[str], status: str | None = None) -> None:
        address = self._address
        if address is None:
            return
        if status is not None:
            assignments = [*assignments, f"STATUS={_one_line(status)}"]
        self._send_datagram(address, "\n".join(assignments).encode())

    def _send_datagram(self, address: str | bytes, payload: bytes) -> None:
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(payload, address)
            except OSError as exc:
                # Reopen next time: the old socket may be in a bad state.
                self._close_locked()
                if not self._failing:
                    self._failing = True
                    log.warning("cannot notify systemd (%s); will keep trying quietly", exc)
                else:
                    log.debug("cannot notify systemd: %s", exc)
                return
            if self._failing:
                self._failing = False
                log.info("notifying systemd works again")

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None

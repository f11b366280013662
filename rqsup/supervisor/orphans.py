"""What a dead child leaves behind, found and killed.

The supervisor is a subreaper (``PR_SET_CHILD_SUBREAPER``): when a child
dies (crashed, or killed for a timeout) before it could kill what its job
started, those processes, daemonized ones included, are reparented to the
supervisor instead of to init. Every half second this task looks at the
supervisor's own children: anything but the forkserver, its resource
tracker and a private redis-server is such an orphan; it is killed with
everything under it, and reaped. (A child still alive keeps its descendants
itself, and kills them after each job: rqsup.sandbox.hygiene.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import psutil

from rqsup.sandbox.hygiene import children_of
from rqsup.supervisor.pool import forkserver_pids

log = logging.getLogger("rqsup.pool")

INTERVAL_S = 0.5


class OrphanReaper:
    def __init__(self, keep: set[int] | None = None) -> None:
        self.keep = set(keep or ())
        self.killed = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            self.sweep()

    def sweep(self) -> int:
        """One pass; returns how many orphans were killed."""
        keep = self.keep | forkserver_pids()
        found = 0
        for pid in children_of(os.getpid()):
            if pid in keep or self._reaped(pid):
                continue
            found += 1
            self._kill(pid)
        if found:
            self.killed += found
        self._reap()
        return found

    @staticmethod
    def _reaped(pid: int) -> bool:
        """An orphan that already exited: reap it, quietly."""
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            return True
        return done == pid

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            ps = psutil.Process(pid)
            what = " ".join(ps.cmdline())[:120] or ps.name()
            below = ps.children(recursive=True)
        except psutil.Error:
            what, below = "?", []
        log.warning("killing pid %d (%s), left behind by a child that died before its job "
                    "ended, and %d process(es) under it", pid, what, len(below))
        for p in [*below, None]:
            target = pid if p is None else p.pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, signal.SIGKILL)

    def _reap(self) -> None:
        """Reap the orphans just killed; never a process we keep."""
        keep = self.keep | forkserver_pids()
        for pid in children_of(os.getpid()):
            if pid not in keep:
                self._reaped(pid)

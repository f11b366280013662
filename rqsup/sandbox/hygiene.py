"""A child's hygiene: what it does to itself before it runs anyone's code, and
what it cleans up after each job. Standard library only (it runs in every
child, and ``rqsup check`` resolves accounts with the same code).

At boot: die with the supervisor, an own process group, default signals,
subreaper (every descendant, daemonized or not, stays ours to find), a
scrubbed environment, nice, rlimits, a group and user drop in the right
order, not dumpable unless core dumps are wanted. After each job: every
process the job left behind is killed and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_RESET_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCHLD",
                  "SIGPIPE")

#: Variables a child keeps from the supervisor's environment (everything else,
#: tokens and passwords included, is dropped); ``[queues.sandbox] env`` adds.
ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "USER",
                 "LOGNAME", "SHELL", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONIOENCODING",
                 "PYTHONUTF8", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV",
                 "RQSUP_PRELOAD")
ENV_PREFIX_ALLOWLIST = ("LC_",)


def prctl(option: int, arg: int) -> bool:
    """Linux prctl(2); False where it is not available or refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def make_subreaper() -> bool:
    """Orphaned descendants are reparented to this process, not to init."""
    return prctl(_PR_SET_CHILD_SUBREAPER, 1)


def not_dumpable() -> bool:
    """Processes of the same uid can no longer read this one's memory
    (``/proc/<pid>/mem``, ptrace) or environment; core dumps are off."""
    return prctl(_PR_SET_DUMPABLE, 0)


def scrubbed_env(environ: Mapping[str, str],
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowlisted part of ``environ``, plus ``extra``."""
    keep = {k: v for k, v in environ.items()
            if k in ENV_ALLOWLIST or k.startswith(ENV_PREFIX_ALLOWLIST)}
    return {**keep, **(extra or {})}


# -- accounts ------------------------------------------------------------------------


class AccountError(ValueError):
    """A user or group that does not exist here; the message names it."""


def resolve_account(user: str | int | None, group: str | int | None
                    ) -> tuple[int | None, int | None, str | None]:
    """``(uid, gid, user name for initgroups)``; a name or a number for each.
    Without ``group`` the user's primary group; the user name is None for a
    uid with no passwd entry (its supplementary groups are then just gid)."""
    import grp
    import pwd

    uid = gid = None
    name = None
    if user is not None:
        text = str(user)
        try:
            entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
        except KeyError:
            if not text.isdigit():
                raise AccountError(f"user {text!r} does not exist on this host") from None
            uid = int(text)
    if group is not None:
        text = str(group)
        try:
            gid = grp.getgrgid(int(text)).gr_gid if text.isdigit() else grp.getgrnam(text).gr_gid
        except KeyError:
            if not text.isdigit():
                raise AccountError(f"group {text!r} does not exist on this host") from None
            gid = int(text)
    return uid, gid, name


def drop_privileges(user: str | int | None, group: str | int | None) -> None:
    """Supplementary groups, then the group, then the user: in this order, or a
    later step is no longer allowed (and root's groups would be kept)."""
    uid, gid, name = resolve_account(user, group)
    if gid is not None:
        if name is not None and group is None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


# -- boot ----------------------------------------------------------------------------


def boot(*, out_fd: int, watch: Callable[[], None], nice: int, rlimits: Mapping[str, int],
         user: str | int | None, group: str | int | None, env: Mapping[str, str],
         dumpable: bool) -> None:
    """Everything a child does to itself before it imports its processor."""
    os.setpgid(0, 0)
    for name in _RESET_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    make_subreaper()
    # Our parent is the forkserver, not the supervisor: watch the supervisor
    # through a pipe only it holds open, and take our whole group down with it.
    threading.Thread(target=watch, daemon=True, name="rqsup supervisor watch").start()
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    fresh = scrubbed_env(os.environ, env)
    os.environ.clear()
    os.environ.update(fresh)
    if nice:
        os.nice(nice)
    import resource

    for name, value in rlimits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    drop_privileges(user, group)
    # After any uid change (which clears both). The alive pipe covers a parent
    # death signal lost anyway; our parent is the forkserver, which exits with
    # the supervisor.
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(_PR_SET_DUMPABLE, 1 if dumpable else 0)


# -- after each job ------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def reap_descendants(max_rounds: int = 50) -> int:
    """Kill and reap every process this one has left (a subreaper's orphans
    included). Costs one ``waitpid`` when there is none, the usual case.
    Returns how many were killed."""
    killed = 0
    for _ in range(max_rounds):
        try:
            while True:
                pid, _status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break  # some still run
        except ChildProcessError:
            return killed  # none left
        for pid in children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                    pgid = os.getpgid(pid)
                    if pgid != os.getpgid(0):
                        os.killpg(pgid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
                killed += 1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)
    return killed

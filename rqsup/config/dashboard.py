"""``[dashboard]`` of a config: where it listens, its users, read-only mode,
masked data keys and the session secret (docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rqsup.config.tomltable import Problems, Table, boolean, string
from rqsup.config.units import parse_listen

DASHBOARD_KEYS = ("listen", "users", "read_only", "mask", "secret")
USER_KEYS = ("name", "password_hash", "role")


@dataclass(frozen=True)
class DashboardUser:
    name: str
    password_hash: str
    role: str = "viewer"


@dataclass(frozen=True)
class DashboardConfig:
    listen: str = "127.0.0.1:8465"
    users: tuple[DashboardUser, ...] = ()
    read_only: bool = False
    #: Job data keys shown as *** on the dashboard, by queue.
    mask: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Signs the session cookies; without one, sessions end when it restarts.
    secret: str | None = None


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError('must be host:port such as "127.0.0.1:8465"')
    parse_listen(value)
    return value


def _mask(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()):
        raise ValueError('must map queue names to lists of data keys, e.g. '
                         '{ mail = ["password"] }')
    return {str(k): tuple(v) for k, v in value.items()}


def parse_dashboard(top: Table, problems: Problems) -> DashboardConfig:
    t = top.table("dashboard", DASHBOARD_KEYS)
    users = []
    raw_users = t.raw.get("users", [])
    if not isinstance(raw_users, list):
        t.problem("users", "must be an array of tables: [[dashboard.users]]")
        raw_users = []
    roles = ("viewer", "operator", "admin")
    for i, item in enumerate(raw_users):
        u = Table(item, f"dashboard.users[{i}]", USER_KEYS, problems)
        name = u.require("name", string, "")
        hashed = u.require("password_hash", string, "")
        if hashed and not hashed.startswith("scrypt$"):
            u.problem("password_hash", "must be a scrypt hash: make one with "
                      "`rqsup dashboard hash-password`")
        role = u.get("role", string, "viewer")
        if role not in roles:
            u.problem("role", f"must be one of {', '.join(roles)}, got {role!r}")
        users.append(DashboardUser(name, hashed, role))
    return DashboardConfig(
        listen=t.get("listen", _listen, "127.0.0.1:8465"), users=tuple(users),
        read_only=t.get("read_only", boolean, False), mask=t.get("mask", _mask, {}),
        secret=t.get("secret", string, None, show=None))

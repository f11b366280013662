"""Value parsers of the config (each raises ValueError saying what is wrong),
and the queue job defaults, read with the producer's own validation."""

from __future__ import annotations

import keyword
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rqsup.config import units
from rqsup.config.tomltable import Table, as_toml, string
from rqsup.queue import options as options_mod
from rqsup.sandbox.hygiene import AccountError, resolve_account

#: Job options a queue may default; the worker applies them at run time to
#: jobs that did not set them (see docs/configuration.md).
JOB_DEFAULT_KEYS = (
    "attempts", "backoff", "timeout", "remove_on_complete", "remove_on_fail", "keep_logs",
)


def job_defaults(t: Table) -> dict[str, Any]:
    """Durations become seconds; then each option, and the whole mapping, goes
    through the producer's own validation so messages match ``queue.add``."""
    out: dict[str, Any] = {}
    for key in JOB_DEFAULT_KEYS:
        if key not in t.raw:
            continue
        try:
            value = job_option_seconds(key, t.raw[key])
            options_mod.build({}, {key: value})
        except ValueError as exc:  # InvalidOption is a ValueError
            t.problem(key, str(exc))
            continue
        out[key] = value
    try:
        options_mod.build({}, out)
    except ValueError as exc:
        t.problem(None, str(exc))
    return out


def job_option_seconds(key: str, value: Any) -> Any:
    def seconds(name: str, v: Any) -> Any:
        if not isinstance(v, str):
            return v  # numbers (seconds) and wrong types are judged by JobOptions
        try:
            return units.parse_duration(v)
        except ValueError as exc:
            raise ValueError(f"{name} {exc}, got {as_toml(v)}") from None

    if key == "timeout":
        return seconds("timeout", value)
    if key == "backoff":
        if isinstance(value, str):
            return seconds("backoff", value)
        if isinstance(value, dict) and "delay" in value:
            return {**value, "delay": seconds("backoff delay", value["delay"])}
    retention = key in ("remove_on_complete", "remove_on_fail")
    if retention and isinstance(value, dict) and "age" in value:
        return {**value, "age": seconds(f"{key} age", value["age"])}
    return value


def check_url(value: Any) -> str:
    from rqsup.queue.endpoints import EndpointError, parse

    if not isinstance(value, str) or not value:
        raise ValueError("must be a URL such as redis://127.0.0.1:6379/0")
    try:
        ep = parse(value)
    except EndpointError as exc:
        raise ValueError(str(exc)) from None
    if ep.kind != "single":
        return value
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("needs a socket path, e.g. unix:///run/redis/redis.sock")
    else:
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError("database must be a number, e.g. redis://127.0.0.1:6379/0")
    return value


def host_ports(value: Any) -> list[str]:
    """``["host:port", ...]``: Cluster seed nodes or sentinels."""
    from rqsup.queue.endpoints import EndpointError, _hostport

    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a non-empty list of "host:port" strings')
    try:
        for v in value:
            _hostport(v, "a")
    except EndpointError as exc:
        raise ValueError(str(exc).replace("a node", "node")) from None
    return list(value)


def existing_file(value: Any, base_dir: Path) -> Path:
    path = (base_dir / string(value)).resolve()
    if not path.is_file():
        raise ValueError(f"file {path} does not exist")
    return path


def processor(value: Any) -> str:
    rule = 'must be "module:function", e.g. "myapp.jobs:send_email"'
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(rule)
    module, attr = value.split(":")
    for part in (*module.split("."), *attr.split(".")):
        if not part.isidentifier() or keyword.iskeyword(part):
            raise ValueError(rule)
    return value


def account(kind: str) -> Callable[[Any], str]:
    """A user or group that exists here, by name or number (kept as a string),
    resolved the way a child resolves it (rqsup.sandbox.hygiene)."""

    def parse(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            raise ValueError(f"must be a {kind} name or a numeric id, got {as_toml(value)}")
        text = str(value)
        try:
            if kind == "user":
                resolve_account(text, None)
            else:
                resolve_account(None, text)
        except AccountError:
            raise ValueError(f"no {kind} {as_toml(value)} on this machine") from None
        return text

    return parse


def env_table(value: Any) -> tuple[tuple[str, str], ...]:
    """``env = {NAME = "value"}``: variables for a child's environment."""
    if not isinstance(value, dict):
        raise ValueError('must be a table of strings, e.g. env = {LANG = "C.UTF-8"}')
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise ValueError(f"has a bad variable name {as_toml(k)}")
        if not isinstance(v, str) or "\0" in v:
            raise ValueError(f"{k} must be a string, got {as_toml(v)}")
        out.append((k, v))
    return tuple(sorted(out))


def directories(base_dir: Path) -> Callable[[Any], tuple[Path, ...]]:
    """A list of directories (relative to the config file's folder)."""

    def parse(value: Any) -> tuple[Path, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError('must be a list of directories, e.g. ["/opt/app"]')
        out = []
        for item in value:
            path = (base_dir / Path(string(item)).expanduser()).resolve()
            if not path.is_dir():
                raise ValueError(f"directory {path} does not exist")
            out.append(path)
        return tuple(out)

    return parse

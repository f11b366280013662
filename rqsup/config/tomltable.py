"""Reading one TOML table: typed getters that collect problems.

A getter that meets a bad value records a problem naming the dotted key and
returns the default, so one pass over a file reports every problem. The value
parsers raise ValueError with a message that says what is accepted.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rqsup.config import units

T = TypeVar("T")


def as_toml(value: Any) -> str:
    """A value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class Problems:
    """Problems found in one file, each line naming the file and the dotted key."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


class Table:
    """One TOML table: typed getters that record a problem and fall back to the
    default, so that reading goes on and every problem is reported."""

    def __init__(
        self,
        raw: Any,
        where: str,
        known: tuple[str, ...],
        problems: Problems,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.where = where
        self.problems = problems
        #: False when the value was not a table: its keys are not reported as missing.
        self.is_table = isinstance(raw, dict)
        if not isinstance(raw, dict):
            problems.add(where, f"must be a table, got {as_toml(raw)}")
            raw = {}
        self.raw: dict[str, Any] = raw
        for key in raw:
            if refused and key in refused:
                self.problem(key, refused[key])
            elif key not in known:
                self.problem(key, unknown_key(key, known))

    def key(self, name: str | None) -> str:
        if name is None:
            return self.where
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str | None, message: str) -> None:
        self.problems.add(self.key(name), message)

    def table(
        self, name: str, known: tuple[str, ...], refused: Mapping[str, str] | None = None
    ) -> Table:
        return Table(self.raw.get(name, {}), self.key(name), known, self.problems, refused)

    def get(
        self,
        name: str,
        parse: Callable[[Any], T],
        default: T,
        show: Callable[[Any], str] | None = as_toml,
    ) -> T:
        """``parse`` raises ValueError saying what is wrong; ", got <value>" is
        appended unless ``show`` is None (the message already names the value)."""
        if name not in self.raw:
            return default
        value = self.raw[name]
        try:
            return parse(value)
        except ValueError as exc:
            shown = "" if show is None else f", got {show(value)}"
            self.problem(name, f"{exc}{shown}")
            return default

    def require(
        self, name: str, parse: Callable[[Any], T], placeholder: T,
        show: Callable[[Any], str] | None = as_toml,
    ) -> T:
        if name not in self.raw:
            if self.is_table:
                self.problem(name, "is required")
            return placeholder
        return self.get(name, parse, placeholder, show=show)


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    """Say what was probably meant: a known key without a unit suffix, or the closest one."""
    for suffix in ("_s", "_ms", "_bytes"):
        if key.endswith(suffix) and key[: -len(suffix)] in known:
            bare = key[: -len(suffix)]
            return f'unknown key (did you mean "{bare}"? units go in the value, e.g. "30s")'
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return f"unknown key (known here: {', '.join(known)})"


# -- value parsers (raise ValueError saying what is wrong) ---------------------


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    if minimum is not None and maximum is not None:
        rule = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        rule = f"an integer >= {minimum}"
    else:
        rule = "an integer"

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be {rule}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(f"must be {rule}")
        return value

    return parse


def choice(choices: tuple[str, ...], fold: bool = False) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        key = value.lower() if fold and isinstance(value, str) else value
        if key not in choices:
            raise ValueError("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return str(key)

    return parse


def duration(min_s: float = 0.0, above: float | None = None,
             max_s: float | None = None) -> Callable[[Any], float]:
    """``above``: strictly greater than; ``min_s``: at least; ``max_s``: at most."""

    def parse(value: Any) -> float:
        seconds = units.parse_duration(value)
        if above is not None and seconds <= above:
            raise ValueError(f"must be longer than {units.format_duration(above)}")
        if seconds < min_s:
            raise ValueError(f"must be at least {units.format_duration(min_s)}")
        if max_s is not None and seconds > max_s:
            raise ValueError(f"must be at most {units.format_duration(max_s)}")
        return seconds

    return parse


def size(minimum: int = 0, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        size = units.parse_size(value)
        if size < minimum:
            raise ValueError(f"must be at least {units.format_size(minimum)}")
        if maximum is not None and size > maximum:
            raise ValueError(f"must be at most {units.format_size(maximum)}")
        return size

    return parse

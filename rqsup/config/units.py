"""Durations and sizes as people write them in config files.

Durations: ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, compounds such
as ``"1h30m"``, or a plain number of seconds. Sizes: ``"512MiB"``, ``"1GiB"``,
``"100MB"``, ``"4096"`` or a plain number of bytes. Binary (KiB, MiB, ...) and
decimal (KB, MB, ...) units are both accepted because both are common and the
difference matters for memory limits; a bare ``"M"`` or ``"G"`` is refused as
ambiguous.
"""

from __future__ import annotations

import math
import re

DURATION_UNITS_S: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

SIZE_UNITS_BYTES: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)\s*")
_DURATION_FULL = re.compile(rf"(?:\s*{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")

DURATION_HINT = 'a duration such as "250ms", "30s", "5m", "2h", "1d" or a number of seconds'
SIZE_HINT = 'a size such as "512MiB", "1GiB", "100MB" or a number of bytes'


def parse_duration(value: object) -> float:
    """Seconds from a duration string or number; ValueError names what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"must be {DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(rf"-?{_NUMBER}", text):
            seconds = float(text)
        elif text and _DURATION_FULL.fullmatch(text):
            seconds = sum(
                float(num) * DURATION_UNITS_S[unit] for num, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ValueError(f"must be {DURATION_HINT}")
    else:
        raise ValueError(f"must be {DURATION_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be {DURATION_HINT}")
    if seconds < 0:
        raise ValueError("must be >= 0")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a size string or number; ValueError names what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"must be {SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be >= 0")
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be {SIZE_HINT}")
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"must be {SIZE_HINT}")
    number, unit = match.groups()
    factor = SIZE_UNITS_BYTES.get(unit.lower() or "b")
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    size = float(number) * factor
    if size != int(size):
        raise ValueError(f"must be a whole number of bytes, got {size} bytes")
    return int(size)


def format_duration(seconds: float) -> str:
    """The shortest readable form, for messages and ``rqsup check``."""
    for unit, factor in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The largest binary unit that divides the size exactly, else bytes."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``":9464"`` (all addresses) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics listen must be host:port such as '127.0.0.1:9464', "
                         f"got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)

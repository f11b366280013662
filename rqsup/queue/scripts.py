"""Load the Lua scripts, resolve their includes, and describe requests.

Operations are written once, as generators that yield requests
(:class:`Script`, :class:`Command`, :class:`Batch`) and receive replies; the
sync and async drivers in :mod:`rqsup.queue.drivers` run them. This keeps
argument building and reply parsing in one place for both APIs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

T = TypeVar("T")

_INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


def _load_all() -> dict[str, LuaScript]:
    root = resources.files("rqsup.queue") / "lua"
    includes = {
        f.name[:-4]: f.read_text() for f in (root / "includes").iterdir() if f.name.endswith(".lua")
    }
    scripts: dict[str, LuaScript] = {}
    for f in root.iterdir():
        if not f.name.endswith(".lua"):
            continue

        def inline(m: re.Match[str], fname: str = f.name) -> str:
            name = m.group(1)
            if name not in includes:
                raise RuntimeError(f"{fname} includes unknown {name!r}")
            return includes[name]

        source = _INCLUDE.sub(inline, f.read_text())
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[f.name[:-4]] = LuaScript(f.name[:-4], source, sha)
    return scripts


SCRIPTS: dict[str, LuaScript] = _load_all()


@dataclass(frozen=True, slots=True)
class Script:
    """Call one Lua script by SHA (loaded on NOSCRIPT)."""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(frozen=True, slots=True)
class Command:
    """One plain Redis command (reads, SCAN, UNLINK)."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Several requests in one round trip (a non-transactional pipeline)."""

    requests: Sequence[Script | Command]


Request = Script | Command | Batch
Op = Generator[Request, Any, T]

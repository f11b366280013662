"""Small pieces of the worker's contract with processors: loading one by name,
a result already encoded by a child, and the timeout error recorded on jobs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rqsup.errors import InvalidOption


class JobTimedOut(Exception):
    """The job ran longer than its timeout (the reason recorded on the job)."""


class RawJSON:
    """A result a child already encoded as JSON: written as is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def load_processor(spec: str) -> Callable[..., Any]:
    """``module:function`` -> the function; errors name the processor."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise InvalidOption(f"processor must be 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise InvalidOption(f"processor {spec!r} cannot be loaded: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise InvalidOption(f"processor {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]

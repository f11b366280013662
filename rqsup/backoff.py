"""Retry backoff: fixed, exponential, jitter, and named custom strategies.

Backoff is computed by the worker, in Python, and handed to the fail script:
custom strategies are Python callables registered on the worker, and one
implementation serves them all.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from rqsup.errors import InvalidOption

#: A custom strategy: (attempts_made, error_type, error_message, job_data) -> delay in
#: seconds; a negative value means "do not retry".
BackoffStrategy = Callable[[int, str, str, Any], float]

BUILTIN = ("fixed", "exponential")


def normalize(spec: Any) -> dict[str, Any] | None:
    """Validate a backoff option; returns ``{"type", "delay_ms", "jitter"}`` or None.

    Accepted: a number of seconds (fixed), or a mapping with ``type`` ("fixed",
    "exponential" or a custom strategy name), ``delay`` in seconds and optional
    ``jitter`` between 0 and 1.
    """
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise InvalidOption(f"backoff must be seconds or a mapping, got {spec!r}")
    if isinstance(spec, int | float):
        spec = {"type": "fixed", "delay": spec}
    if not isinstance(spec, Mapping):
        raise InvalidOption(f"backoff must be seconds or a mapping, got {spec!r}")
    unknown = set(spec) - {"type", "delay", "jitter"}
    if unknown:
        raise InvalidOption(f"backoff has unknown keys {sorted(unknown)}")
    kind = spec.get("type", "fixed")
    if not isinstance(kind, str) or not kind:
        raise InvalidOption(f"backoff type must be a name, got {kind!r}")
    delay = spec.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise InvalidOption(f"backoff delay must be seconds >= 0, got {delay!r}")
    jitter = spec.get("jitter", 0)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        raise InvalidOption(f"backoff jitter must be between 0 and 1, got {jitter!r}")
    return {"type": kind, "delay_ms": round(delay * 1000), "jitter": float(jitter)}


def retry_delay_ms(
    spec: Mapping[str, Any] | None,
    attempts_made: int,
    error_type: str,
    message: str,
    data: Any,
    strategies: Mapping[str, BackoffStrategy],
    rng: random.Random | None = None,
) -> int:
    """Delay before the next attempt, in ms; -1 means fail now.

    ``attempts_made`` counts the attempt that just failed (1 after the first).
    Exponential is ``delay * 2**(attempts_made - 1)``; jitter j draws the
    delay uniformly from ``[delay * (1 - j), delay]``.
    """
    if not spec:
        return 0
    kind = spec["type"]
    base = float(spec["delay_ms"])
    if kind == "fixed":
        delay = base
    elif kind == "exponential":
        delay = base * 2 ** max(0, attempts_made - 1)
    elif kind in strategies:
        seconds = strategies[kind](attempts_made, error_type, message, data)
        if seconds < 0:
            return -1
        delay = seconds * 1000.0
    else:
        raise InvalidOption(
            f"backoff strategy {kind!r} is not registered on this worker "
            f"(known: {', '.join(sorted({*BUILTIN, *strategies}))})"
        )
    jitter = float(spec.get("jitter", 0))
    if jitter:
        delay -= delay * jitter * (rng or random).random()
    return max(0, round(delay))

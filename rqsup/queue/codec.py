"""JSON in and out of Redis, through orjson.

orjson is several times faster than the stdlib json for both directions,
which matters at tens of thousands of jobs a second, and it refuses what
JSON cannot say (non-string keys, integers past 64 bits) instead of
guessing. Dataclasses and datetimes are refused too (passthrough options),
so a value either round-trips as plain JSON or is rejected before anything
is written. Nothing read from Redis is ever unpickled.
"""

from __future__ import annotations

from typing import Any

import orjson

from rqsup.errors import EncodeError

_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def encode(value: Any, what: str) -> str:
    """Encode ``value`` as JSON text, or raise EncodeError naming ``what``."""
    try:
        return orjson.dumps(value, default=_refuse, option=_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EncodeError(f"{what} cannot be encoded as JSON: {exc}") from None


def decode(raw: str | bytes) -> Any:
    """Decode JSON text written by rqsup (orjson.JSONDecodeError is a ValueError)."""
    return orjson.loads(raw)


def text(raw: str | bytes | None) -> str:
    """A reply value as str, whatever the client's decode_responses setting."""
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)

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


def dumps(value: Any) -> bytes:
    """JSON bytes exactly as :func:`encode` makes them; raises TypeError or
    orjson.JSONEncodeError (the caller names what failed)."""
    return orjson.dumps(value, default=_refuse, option=_OPTS)


def encode(value: Any, what: str) -> str:
    """Encode ``value`` as JSON text, or raise EncodeError naming ``what``."""
    try:
        return orjson.dumps(value, default=_refuse, option=_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EncodeError(f"{what} cannot be encoded as JSON: {exc}") from None


#: The largest job data an add takes unless told otherwise (``max_data_bytes``
#: of Queue, AsyncQueue and FlowProducer): a job that big slows every read of
#: its queue; put big payloads elsewhere and pass a reference.
DEFAULT_MAX_DATA_BYTES = 16 << 20


def encode_data(value: Any, what: str, limit: int = DEFAULT_MAX_DATA_BYTES) -> str:
    """Job data as JSON text, refused (EncodeError) past ``limit`` bytes."""
    text = encode(value, what)
    if len(text) > limit:
        raise EncodeError(f"{what} is {len(text)} bytes of JSON, over the limit of {limit} "
                          "(max_data_bytes): store it elsewhere and pass a reference")
    return text


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

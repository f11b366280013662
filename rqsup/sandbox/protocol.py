"""The wire protocol between the supervisor and a child: one module, both ends.

A frame is a 4-byte big-endian length N, then N bytes: one byte naming the
message (:class:`Kind`), then its body. Bodies are data only: JSON (orjson
where it is importable, else the stdlib), or UTF-8 text for a log line.
Nothing a child sends is ever unpickled: a child runs user code, and the
supervisor holds the Redis credentials (and may run as root).

The supervisor reads with :class:`FrameReader`, which buffers without
copying the whole buffer per read and refuses a frame over its size cap or
of an unknown kind with :class:`ProtocolError`; whoever reads decides what
comes out of turn. Job data, options and results already are JSON text on
the supervisor's side: they are spliced into frames as they are, never
decoded and encoded again there.

Imported by the child: the standard library only (and orjson, optional).
"""

from __future__ import annotations

import enum
import struct
import traceback
from typing import Any


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


try:
    import orjson

    # As strict as rqsup.queue.codec: a value either round-trips as plain JSON
    # or is refused (datetimes and dataclasses included), in every mode.
    _OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value, default=_refuse, option=_OPTS)

    def loads(raw: bytes | bytearray | memoryview | str) -> Any:
        return orjson.loads(raw)

except ImportError:  # pragma: no cover - orjson is a dependency of rqsup
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), default=_refuse).encode()

    def loads(raw: bytes | bytearray | memoryview | str) -> Any:
        if isinstance(raw, memoryview | bytearray):
            raw = bytes(raw)
        return json.loads(raw)


HEADER = struct.Struct("!I")
#: The largest frame a reader takes unless told otherwise (a result's cap is
#: a config key; this bounds everything else).
DEFAULT_MAX_FRAME = 64 << 20


class Kind(enum.IntEnum):
    """Message types. Supervisor to child: JOB, STOP (its job pipe), CANCEL
    (its control pipe: read by a thread while a job runs). Child to supervisor:
    READY, BOOT_ERROR, PROGRESS, LOG, CHILDREN, RESULT, ERROR."""

    JOB = 1          # JSON [id, name, attempts_made, attempts, timestamp_ms, data, opts,
                     #       flow, progress]
    STOP = 2         # empty
    CANCEL = 3       # JSON [job id, reason]: cancel that job if it runs (control pipe)
    READY = 10       # JSON {"pid": int}
    BOOT_ERROR = 11  # JSON error (error_data)
    PROGRESS = 12    # JSON value
    LOG = 13         # UTF-8 text, one line
    CHILDREN = 14    # JSON list of flow nodes
    RESULT = 15      # JSON value: the job's return value
    ERROR = 16       # JSON error (error_data)


#: Kinds whose body must be valid JSON.
JSON_KINDS = frozenset({Kind.JOB, Kind.CANCEL, Kind.READY, Kind.BOOT_ERROR, Kind.PROGRESS,
                        Kind.CHILDREN, Kind.RESULT, Kind.ERROR})
_KINDS = {k.value: k for k in Kind}


class ProtocolError(Exception):
    """A frame that does not parse, is too large, or comes out of turn."""


def frame(kind: Kind, body: bytes = b"") -> bytes:
    """One frame: header, kind, body."""
    return HEADER.pack(len(body) + 1) + bytes((kind,)) + body


def job_frame(job_id: str, name: str, data_json: str, attempts_made: int, attempts: int,
              timestamp_ms: int, opts_json: str, flow_json: str | None,
              progress_json: str | None) -> bytes:
    """A JOB frame, with the JSON texts spliced in as they are (the supervisor
    checked them when it read the job)."""
    head = dumps([job_id, name, attempts_made, attempts, timestamp_ms])
    body = b"".join((head[:-1], b",", data_json.encode(), b",", opts_json.encode(), b",",
                     (flow_json or "null").encode(), b",", (progress_json or "null").encode(),
                     b"]"))
    return HEADER.pack(len(body) + 1) + _JOB + body


_JOB = bytes((Kind.JOB,))


class FrameReader:
    """Whole frames out of a byte stream.

    ``feed(chunk)`` returns the frames now complete as ``(kind, body)``; a
    frame larger than ``max_frame`` or of an unknown kind raises
    :class:`ProtocolError` (the stream cannot be trusted after that). The
    buffer is a bytearray consumed from the front: a 32 MiB frame read in
    64 KiB chunks costs one copy, not one per chunk.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> bool:
        """Part of a frame is waiting for the rest."""
        return len(self._buf) > self._pos

    @property
    def want(self) -> int:
        """Bytes still missing for the frame being read (a read size hint)."""
        have = len(self._buf) - self._pos
        if have < HEADER.size:
            return HEADER.size - have
        (n,) = HEADER.unpack_from(self._buf, self._pos)
        return max(HEADER.size + int(n) - have, 0)

    def feed(self, chunk: bytes) -> list[tuple[Kind, bytes]]:
        if self._pos == len(self._buf):
            # Nothing buffered (the usual case): read whole frames straight
            # from the chunk and keep only what is left of it.
            self._buf.clear()
            self._pos = 0
            out, used = self._frames(chunk, 0, len(chunk))
            if used < len(chunk):
                self._buf += chunk[used:]
            return out
        self._buf += chunk
        out, pos = self._frames(self._buf, self._pos, len(self._buf))
        end = len(self._buf)
        if pos == end:
            self._buf.clear()
            self._pos = 0
        elif pos > (1 << 16) and pos * 2 > end:
            del self._buf[:pos]
            self._pos = 0
        else:
            self._pos = pos
        return out

    def _frames(self, buf: bytes | bytearray, pos: int, end: int
                ) -> tuple[list[tuple[Kind, bytes]], int]:
        out: list[tuple[Kind, bytes]] = []
        while end - pos >= HEADER.size:
            (n,) = HEADER.unpack_from(buf, pos)
            if n == 0:
                raise ProtocolError("an empty frame (no message type)")
            if n > self.max_frame:
                raise ProtocolError(f"a frame of {n} bytes, over the cap of {self.max_frame}")
            if end - pos - HEADER.size < n:
                break
            start = pos + HEADER.size
            kind = _KINDS.get(buf[start])
            if kind is None:
                raise ProtocolError(f"a frame of unknown type {buf[start]}")
            out.append((kind, bytes(buf[start + 1:start + n])))
            pos = start + n
        return out, pos


def decode(kind: Kind, body: bytes) -> Any:
    """The body's value: JSON decoded, or the text of a LOG; ProtocolError if
    it does not parse."""
    if kind is Kind.LOG:
        return body.decode("utf-8", "replace")
    if kind is Kind.STOP:
        return None
    try:
        return loads(body)
    except ValueError as exc:
        raise ProtocolError(f"a {kind.name} frame that is not JSON: {exc}") from None


# -- errors as data ------------------------------------------------------------------

#: ``control`` of an error: what the worker does instead of failing the job.
CONTROLS = ("unrecoverable", "rate_limited", "waiting_children", "delayed", "waiting")


def error_data(exc: BaseException, *, control: str | None = None,
               delay_s: float | None = None, stack_limit: int = 30) -> dict[str, Any]:
    """An exception as data: type, message, a bounded stack trace, and what it
    asks of the worker (``control``). Survives an exception whose ``str()``
    (or whose traceback) raises."""
    etype = type(exc).__qualname__
    try:
        message = str(exc) or etype
    except Exception as inner:  # a hostile __str__
        message = f"<{etype} whose str() raised {type(inner).__name__}>"
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                                   limit=stack_limit))
    except Exception:
        stack = f"{etype}: {message}\n(the stack trace could not be formatted)"
    out: dict[str, Any] = {"type": etype, "message": message[:8000], "stacktrace": stack[-8000:],
                           "control": control}
    if delay_s is not None:
        out["delay_s"] = delay_s
    return out


def check_error(value: Any) -> dict[str, Any]:
    """An ERROR or BOOT_ERROR body from a child, as a well-formed error dict."""
    if not isinstance(value, dict):
        raise ProtocolError(f"an error frame that is not an object: {str(value)[:60]}")
    etype, message = value.get("type"), value.get("message")
    if not isinstance(etype, str) or not isinstance(message, str):
        raise ProtocolError("an error frame without a type and a message")
    control = value.get("control")
    if control is not None and control not in CONTROLS:
        raise ProtocolError(f"an error frame with an unknown control {str(control)[:40]!r}")
    delay = value.get("delay_s")
    if control == "rate_limited" and (isinstance(delay, bool)
                                      or not isinstance(delay, int | float)):
        raise ProtocolError("a rate_limited error without a delay")
    until = value.get("until_ms")
    if control == "delayed" and (isinstance(until, bool) or not isinstance(until, int)):
        raise ProtocolError("a delayed error without an until_ms")
    stack = value.get("stacktrace")
    return {"type": etype[:200], "message": message[:8000],
            "stacktrace": stack[-8000:] if isinstance(stack, str) else "",
            "control": control, "delay_s": delay, "until_ms": until}
